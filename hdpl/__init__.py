__version__ = "0.1.0"

# HF-native HDPL classes (hdpl.hf, chapter 12) are registered with transformers' AutoConfig / AutoModelForCausalLM when
# hdpl is imported, so `AutoModelForCausalLM.from_pretrained(dir)` of a saved HDPL model works after `import hdpl`.
# Where transformers is not installed (e.g. a bare torch_xla environment) nothing is registered.
import importlib.util as _ilu
if _ilu.find_spec('transformers') is not None: from . import hf as _hf
