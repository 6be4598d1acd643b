"""One module per paper. Importing this package imports every module in it, so
each registers its stage functions and recipe (a new file needs no edit here)."""
import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
