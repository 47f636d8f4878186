"""What every lmvalue plot shares: the Agg backend and fonts that can draw the labels it is given.

Labels, arm and corpus names are often Chinese. Matplotlib's default font (DejaVu Sans) has no CJK
glyphs and warns once per missing character ("Glyph 27491 ... missing from font(s) DejaVu Sans"),
which floods a study's terminal. :func:`figure_fonts` puts an installed CJK font (Noto Sans CJK,
Source Han Sans, WenQuanYi, SimHei, ...) after DejaVu Sans as a fallback, so the characters are drawn;
without one they are drawn as boxes (matplotlib's bundled Last Resort font), the glyph warnings are
not shown (the plot is still written) and, with ``-v``, one line names a font to install.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Iterator

log = logging.getLogger("lmvalue")

# Fonts with CJK glyphs, most common first (Linux, macOS, Windows).
CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Noto Sans CJK TC",
    "Noto Sans CJK KR",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
    "AR PL UMing CN",
    "AR PL UKai CN",
    "PingFang SC",
    "Hiragino Sans GB",
    "Heiti SC",
    "STHeiti",
    "Arial Unicode MS",
    "Microsoft YaHei",
    "SimHei",
    "SimSun",
    "MS Gothic",
    "Malgun Gothic",
)
LAST_RESORT = "Last Resort High-Efficiency"  # bundled with matplotlib >= 3.10: a box per glyph
_GLYPH_WARNING = r"Glyph \d+ .*missing from (current )?font"


@functools.cache
def font_families() -> tuple[str, ...]:
    """``font.family`` for lmvalue plots: DejaVu Sans, then the installed CJK fonts as fallbacks."""
    from matplotlib import font_manager

    have = {f.name for f in font_manager.fontManager.ttflist}
    cjk = [name for name in CJK_FONTS if name in have]
    if not cjk:
        log.debug("no CJK font for plots: CJK labels are drawn as boxes (install one, e.g. fonts-noto-cjk)")
    return ("DejaVu Sans", *cjk, *([LAST_RESORT] if LAST_RESORT in have else []))


@contextlib.contextmanager
def figure_fonts() -> Iterator[object]:
    """Draw and save figures inside this block: the Agg backend, CJK fallback fonts, and no
    missing-glyph warnings. Yields ``matplotlib.pyplot``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"font.family": list(font_families())}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_GLYPH_WARNING, category=UserWarning)
        yield plt
