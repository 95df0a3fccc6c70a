"""A small name -> object registry shared by models, losses and recipes.

Every pluggable piece of keras_semkd (CIFAR backbones, distillation losses,
experiment recipes) is looked up by a string name.  A registry refuses
duplicate names and a failed lookup lists the names it knows, so a typo in a
recipe fails before any training starts.
"""

import difflib


class Registry:
    """Maps names to objects (classes, builder functions, configs).

    Args:
        kind: what the registry holds, used in error messages
            (e.g. `"model"`, `"distillation loss"`).
        case_sensitive: if `False` (default), names are matched ignoring
            case, so `"ResNet8x4"` and `"resnet8x4"` are the same entry.

    Example:

    ```python
    MODELS = Registry("model")

    @MODELS.register("resnet8")
    def resnet8(num_classes=100):
        ...

    MODELS.get("resnet8")
    ```
    """

    def __init__(self, kind, case_sensitive=False):
        self.kind = kind
        self.case_sensitive = case_sensitive
        self._entries = {}
        self._display = {}

    def _key(self, name):
        if not isinstance(name, str):
            raise TypeError(
                f"A {self.kind} name must be a string. "
                f"Received: name={name!r} of type {type(name).__name__}"
            )
        return name if self.case_sensitive else name.lower()

    def register(self, name=None, obj=None):
        """Registers `obj` under `name`; usable as a decorator.

        `register("a", obj)` registers directly; `@register("a")` and
        `@register()` (which uses `obj.__name__`) decorate.  Registering a
        name twice raises `ValueError`.
        """

        def _do(o):
            n = name if name is not None else o.__name__
            key = self._key(n)
            if key in self._entries:
                raise ValueError(
                    f"A {self.kind} named {n!r} is already registered "
                    f"({self._entries[key]!r})."
                )
            self._entries[key] = o
            self._display[key] = n
            return o

        if obj is not None:
            return _do(obj)
        return _do

    def get(self, name):
        """Returns the object registered as `name`, or raises `KeyError`
        whose message lists the known names (and the closest matches)."""
        key = self._key(name)
        if key not in self._entries:
            known = self.names()
            close = difflib.get_close_matches(
                key, list(self._entries), n=3, cutoff=0.6
            )
            hint = ""
            if close:
                hint = " Did you mean: " + ", ".join(
                    self._display[c] for c in close
                ) + "?"
            raise KeyError(
                f"Unknown {self.kind} {name!r}.{hint} "
                f"Known {self.kind} names: {', '.join(known)}"
            )
        return self._entries[key]

    def names(self):
        """The registered names, sorted, as they were registered."""
        return sorted(self._display.values(), key=str.lower)

    def __contains__(self, name):
        try:
            return self._key(name) in self._entries
        except TypeError:
            return False

    def __iter__(self):
        return iter(self.names())

    def __len__(self):
        return len(self._entries)

    def __repr__(self):
        return f"Registry({self.kind!r}, {len(self)} entries)"
