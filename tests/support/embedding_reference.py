"""Reference embeddings of all-MiniLM-L6-v2 computed without llama.cpp, in another Python.

Run as a script in an environment with torch and transformers (the ONNX build venv has both), with the
model folder and the sentences as JSON on stdin; it prints the vectors as JSON. It uses
sentence-transformers when that is installed, else the same pipeline the model's modules.json names:
the transformer, mean pooling over the attention mask, L2 normalisation.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    request = json.load(sys.stdin)
    folder, sentences = request["folder"], request["sentences"]
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        import torch
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder).eval()
        batch = tokenizer(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        vectors = torch.nn.functional.normalize(pooled, dim=1).tolist()
        json.dump({"vectors": vectors, "by": "transformers"}, sys.stdout)
        return
    model = SentenceTransformer(folder, device="cpu")
    vectors = model.encode(sentences, normalize_embeddings=True).tolist()
    json.dump({"vectors": vectors, "by": "sentence-transformers"}, sys.stdout)


if __name__ == "__main__":
    main()
