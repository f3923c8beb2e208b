"""modelyard: the Ollama REST API over pluggable engines."""

__version__ = "0.1.0"

# The Ollama release whose API modelyard implements; /api/version reports it so that clients which
# gate features on the server's version treat modelyard as that release.
OLLAMA_API_VERSION = "0.33.0"
