"""Widget settings that survive page switches (issue 13: sliders reset when you came back).

Streamlit forgets a widget's value when a script run does not draw it, so a user who leaves the
caption page for the text page and comes back would find the beam size back at its default. A
widget drawn with ``key=keep(state, key, default)`` keeps it: `keep` copies the widget's value to a
plain session key (``kept:<key>``), which Streamlit never clears, each time the page is drawn, and
puts it back before the widget is drawn again after a page switch. Widgets kept this way are drawn
without a ``value=``: their value lives in the session state (passing both makes Streamlit warn).

``state`` is `st.session_state` in the app and a plain dict in the tests.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

SAVED_PREFIX = "kept:"
DEFAULT_PREFIX = "default:"  # the default a widget was last drawn with


def keep(
    state: MutableMapping[str, Any],
    key: str,
    default: Any,
    *,
    bounds: tuple[Any, Any] | None = None,
    options: Sequence[Any] | None = None,
    valid: Callable[[Any], bool] | None = None,
) -> str:
    """Make ``state[key]`` hold the value the widget ``key`` should show; return ``key``.

    Order of precedence: the widget's current value (the page is being redrawn), the value it had
    when last drawn (the user comes back to the page), ``default``. A value left at its default
    follows it when the default changes (the decoding settings of another checkpoint picked);
    one the user set stays. A remembered value is clamped into ``bounds`` (a slider's or number
    input's min and max, which can depend on the checkpoint) and replaced by ``default`` when it
    is not among ``options`` or not ``valid``.
    """
    saved, shown_default = SAVED_PREFIX + key, DEFAULT_PREFIX + key
    if key in state:
        value = state[key]
    else:
        value = state.get(saved, default)
    previous = state.get(shown_default, default)
    if value == previous and default != previous:  # left at the default, which has changed
        value = default
    state[shown_default] = default
    if options is not None and value not in options:
        value = default
    if valid is not None and not valid(value):
        value = default
    if bounds is not None and value is not None:
        low, high = bounds
        value = min(max(value, low), high)
    if key not in state or state[key] != value:
        state[key] = value
    state[saved] = value
    return key
