"""Feature maps of infinitely wide networks: sketches and random features."""

from ._features import AbstractFeatureLayer as AbstractFeatureLayer
from ._features import Dense as Dense
from ._features import Features as Features
from ._features import FeatureShape as FeatureShape
from ._features import Serial as Serial
from ._features import kernel as kernel
from ._relu import Relu as Relu
from ._sketch import SRHT as SRHT
from ._sketch import CountSketch as CountSketch
from ._sketch import GaussianSketch as GaussianSketch
from ._sketch import PolySketch as PolySketch
from ._sketch import TensorSRHT as TensorSRHT
from ._sketch import fwht as fwht
