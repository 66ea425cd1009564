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
DEFAULT_PREFIX = "default:"  # the default a following widget was last drawn with
TOUCHED_PREFIX = "touched:"  # set once the user gives a following widget a value of their own
WANTED_PREFIX = "wanted:"  # a value that ``bounds`` clamped, given back once they allow it


def keep(
    state: MutableMapping[str, Any],
    key: str,
    default: Any,
    *,
    bounds: tuple[Any, Any] | None = None,
    options: Sequence[Any] | None = None,
    valid: Callable[[Any], bool] | None = None,
    follow: bool = False,
) -> str:
    """Make ``state[key]`` hold the value the widget ``key`` should show; return ``key``.

    Order of precedence: the widget's current value (the page is being redrawn), the value it had
    when last drawn (the user comes back to the page), ``default``. With ``follow`` (a setting
    whose default is the checkpoint's, such as its decoding settings), a value the user has not
    changed follows the default when it changes; once the user has set another value, it stays.
    A remembered value is clamped into ``bounds`` (a slider's or number input's min and max, which
    can depend on the checkpoint) and replaced by ``default`` when it is not among ``options`` or
    not ``valid``. A value clamped and not changed since is given back once the bounds allow it
    (a top-k of 40 is 5 for a model of 5 characters, and 40 again for the next model).
    """
    saved = SAVED_PREFIX + key
    if key in state:
        value = state[key]
    else:
        value = state.get(saved, default)
    if follow:
        shown_default, touched = DEFAULT_PREFIX + key, TOUCHED_PREFIX + key
        previous = state.get(shown_default, default)
        if value != previous:
            state[touched] = True  # the user's own value
        elif not state.get(touched):
            value = default  # left at the default: it follows
        state[shown_default] = default
    if options is not None and value not in options:
        value = default
    if valid is not None and not valid(value):
        value = default
    if bounds is not None and value is not None:
        wanted = state.get(WANTED_PREFIX + key)
        if wanted is not None and value == state.get(saved):  # left as it was clamped
            value = wanted
        low, high = bounds
        clamped = min(max(value, low), high)
        if clamped != value:
            state[WANTED_PREFIX + key] = value
        else:
            state.pop(WANTED_PREFIX + key, None)
        value = clamped
    if key not in state or state[key] != value:
        state[key] = value
    state[saved] = value
    return key
