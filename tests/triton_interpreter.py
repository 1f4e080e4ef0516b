"""Imported first by the Triton-interpreter checks (tests/test_fast_*.py run them in a fresh process with
TRITON_INTERPRET=1).

Triton's interpreter makes a loop bound read from memory or passed as an argument a 1-element array, which
numpy >= 2 refuses to turn into an int; read its single element instead (interpreter only).
"""

import triton.runtime.interpreter as interpreter

_original = interpreter._patch_lang_tensor


def _patched(tensor, scope):
    _original(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))


interpreter._patch_lang_tensor = _patched
