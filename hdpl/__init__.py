__version__ = "0.1.0"

# `import hdpl` registers the HF-native HDPL classes (hdpl.hf, chapter 12) with transformers' AutoConfig and
# AutoModelForCausalLM, so that `AutoModelForCausalLM.from_pretrained(dir)` of a saved HDPL model works. It does not
# import transformers for that (seconds): if transformers is loaded already, hdpl.hf is imported now; otherwise just
# after transformers is first imported. Where transformers is not installed, nothing happens.
import sys as _sys

def _register_hf():
    try: from . import hf  # noqa: F401 (importing hdpl.hf registers the classes)
    except Exception as e:
        import warnings
        warnings.warn(f"hdpl could not register its HDPL classes with transformers: {type(e).__name__}: {e}")

class _AfterTransformersImport:
    "A meta-path finder that runs `_register_hf` once, right after the `transformers` package has been executed."
    def find_spec(self, name, path=None, target=None):
        if name != 'transformers': return None
        _sys.meta_path.remove(self)
        from importlib.machinery import PathFinder
        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, 'exec_module'): return spec
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            _register_hf()
        spec.loader.exec_module = exec_module
        return spec

if 'transformers' in _sys.modules: _register_hf()
elif not any(isinstance(f, _AfterTransformersImport) for f in _sys.meta_path): _sys.meta_path.insert(0, _AfterTransformersImport())
