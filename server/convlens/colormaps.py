"""Colour maps for heatmaps: 256x3 tables, value 0 first.

``inferno`` is matplotlib's (Nathaniel J. Smith and Stéfan van der Walt, 2015; released under CC0): black →
purple → red → orange → pale yellow, its lightness rising with the value, so the eye reads values in order.
Its 256 colours are held here as 8-bit sRGB (``matplotlib.colormaps["inferno"]`` sampled at 256 points and
rounded), the levels the server's PNGs and ``/api/colormaps/inferno`` show. ``grey`` is the plain ramp.
"""

from __future__ import annotations

from functools import cache

import numpy as np

_INFERNO_HEX = (
    "00000401000501010601010802010a02020c02020e03021004031204031405041706041907051b08051d09061f0a0722"
    "0b07240c08260d08290e092b10092d110a30120a32140b34150b37160b39180c3c190c3e1b0c411c0c431e0c451f0c48"
    "210c4a230c4c240c4f260c51280b53290b552b0b572d0b592f0a5b310a5c320a5e340a5f3609613809623909633b0964"
    "3d09653e0966400a67420a68440a68450a69470b6a490b6a4a0c6b4c0c6b4d0d6c4f0d6c510e6c520e6d540f6d550f6d"
    "57106e59106e5a116e5c126e5d126e5f136e61136e62146e64156e65156e67166e69166e6a176e6c186e6d186e6f196e"
    "71196e721a6e741a6e751b6e771c6d781c6d7a1d6d7c1d6d7d1e6d7f1e6c801f6c82206c84206b85216b87216b88226a"
    "8a226a8c23698d23698f24699025689225689326679526679727669827669a28659b29649d29649f2a63a02a63a22b62"
    "a32c61a52c60a62d60a82e5fa92e5eab2f5ead305dae305cb0315bb1325ab3325ab43359b63458b73557b93556ba3655"
    "bc3754bd3853bf3952c03a51c13a50c33b4fc43c4ec63d4dc73e4cc83f4bca404acb4149cc4248ce4347cf4446d04545"
    "d24644d34743d44842d54a41d74b3fd84c3ed94d3dda4e3cdb503bdd513ade5238df5337e05536e15635e25734e35933"
    "e45a31e55c30e65d2fe75e2ee8602de9612bea632aeb6429eb6628ec6726ed6925ee6a24ef6c23ef6e21f06f20f1711f"
    "f1731df2741cf3761bf37819f47918f57b17f57d15f67e14f68013f78212f78410f8850ff8870ef8890cf98b0bf98c0a"
    "f98e09fa9008fa9207fa9407fb9606fb9706fb9906fb9b06fb9d07fc9f07fca108fca309fca50afca60cfca80dfcaa0f"
    "fcac11fcae12fcb014fcb216fcb418fbb61afbb81dfbba1ffbbc21fbbe23fac026fac228fac42afac62df9c72ff9c932"
    "f9cb35f8cd37f8cf3af7d13df7d340f6d543f6d746f5d949f5db4cf4dd4ff4df53f4e156f3e35af3e55df2e661f2e865"
    "f2ea69f1ec6df1ed71f1ef75f1f179f2f27df2f482f3f586f3f68af4f88ef5f992f6fa96f8fb9af9fc9dfafda1fcffa4"
)
"""matplotlib's inferno, 256 ``rrggbb`` colours from value 0 to value 1."""
NAMES = ("inferno", "grey")


def _from_hex(colours: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(colours), dtype=np.uint8).reshape(-1, 3) / 255.0


@cache
def colormap(name: str = "inferno") -> np.ndarray:
    """The 256x3 float32 table of ``name`` (one of :data:`NAMES`), rows from value 0 to value 1."""
    ramp = np.linspace(0.0, 1.0, 256)
    if name == "grey":
        table = np.repeat(ramp[:, None], 3, axis=1)
    elif name == "inferno":
        table = _from_hex(_INFERNO_HEX)
    else:
        raise ValueError(f"unknown colour map {name!r}; expected one of {NAMES}")
    table = table.astype(np.float32)
    table.setflags(write=False)
    return table


def colorize(values: np.ndarray, name: str = "inferno") -> np.ndarray:
    """HxW values in [0, 1] (clipped; NaN as 0) → HxWx3 float32 colours of map ``name``."""
    clean = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0), 0.0, 1.0)
    return colormap(name)[np.rint(clean * 255).astype(np.intp)]


def overlay(image: np.ndarray, values: np.ndarray, opacity: float = 0.6, name: str = "inferno") -> np.ndarray:
    """``values`` (HxW in [0, 1]) coloured by ``name`` and blended over ``image`` (HxWx3 in [0, 1]) at ``opacity``."""
    base = np.asarray(image, dtype=np.float32)
    if base.shape[:2] != np.shape(values):
        raise ValueError(f"image {base.shape[:2]} and values {np.shape(values)} differ in size")
    return (1.0 - opacity) * base + opacity * colorize(values, name)
