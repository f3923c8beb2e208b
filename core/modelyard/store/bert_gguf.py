"""A BERT sentence-embedding model (Hugging Face safetensors and tokenizer.json) written as a GGUF file, the
layout llama.cpp's convert_hf_to_gguf.py gives BertModel: the `bert` architecture, non-causal attention,
the pooling of the sentence-transformers folder, and a WordPiece vocabulary in "phantom space" form
(a word-initial piece gets a leading U+2581, a `##` continuation loses its marks).

It needs the `gguf` writer (and numpy), from `modelyard[embed]`; the safetensors file is read directly.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# sentence-transformers' 1_Pooling/config.json flags, as llama.cpp's pooling types (llama.h).
POOLING_TYPES = {"pooling_mode_mean_tokens": 1, "pooling_mode_cls_token": 2}
F32_MATRICES = ("position_embd.weight", "token_types.weight")
SKIPPED_TENSORS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def read_safetensors(path: Path) -> dict[str, Any]:
    """Every tensor of a safetensors file as a numpy array (the format: a length, a JSON header, data)."""
    import numpy as np

    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
        data = file.read()
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__" or entry["dtype"] not in SAFETENSORS_DTYPES:
            continue
        start, end = entry["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=SAFETENSORS_DTYPES[entry["dtype"]])
        tensors[name] = array.reshape(entry["shape"]).astype(np.float32)
    return tensors


def phantom_vocabulary(tokenizer: dict[str, Any]) -> tuple[list[str], list[int]]:
    """The WordPiece vocabulary in llama.cpp's form, with each token's type (control for [CLS] and the other
    added special tokens, unknown for [UNK])."""
    import gguf

    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    unknown = tokenizer["model"].get("unk_token", "[UNK]")
    special = {added["content"] for added in tokenizer.get("added_tokens", []) if added.get("special")}
    tokens = [""] * len(vocab)
    types = [int(gguf.TokenType.NORMAL)] * len(vocab)
    for text, index in vocab.items():
        if text == unknown:
            tokens[index], types[index] = text, int(gguf.TokenType.UNKNOWN)
        elif text in special:
            tokens[index], types[index] = text, int(gguf.TokenType.CONTROL)
        elif text.startswith("##"):
            tokens[index] = text[2:]
        else:
            tokens[index] = "\u2581" + text
    return tokens, types


def convert_bert(folder: Path, target: Path, name: str) -> None:
    """Write the sentence-transformers BERT model in `folder` to the GGUF file `target` (f16 matrices)."""
    import gguf
    import numpy as np

    config = json.loads((folder / "config.json").read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    pooling_file = folder / "1_Pooling" / "config.json"
    pooling = json.loads(pooling_file.read_text()) if pooling_file.exists() else {"pooling_mode_mean_tokens": True}
    pooling_type = next((kind for flag, kind in POOLING_TYPES.items() if pooling.get(flag)), 1)
    blocks = config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, blocks)

    writer = gguf.GGUFWriter(str(target), "bert")
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(blocks)
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType(pooling_type))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    tokens, types = phantom_vocabulary(tokenizer)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_type_count(config.get("type_vocab_size", 2))
    special = gguf.SpecialVocab(folder, n_vocab=len(tokens))  # [CLS] first, [SEP] last, [PAD], [UNK], [MASK]
    special.add_to_gguf(writer)

    for hf_name, array in read_safetensors(folder / "model.safetensors").items():
        hf_name = hf_name.removeprefix("bert.")
        if hf_name in SKIPPED_TENSORS:
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for the BERT tensor {hf_name}")
        # Weight matrices in f16 (as Ollama's all-minilm). Norms, biases and the position and token-type
        # embeddings stay f32: llama.cpp adds them to f32 activations, and its CPU add takes no f16.
        half = array.ndim == 2 and gguf_name not in F32_MATRICES
        writer.add_tensor(gguf_name, array.astype(np.float16) if half else array)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
