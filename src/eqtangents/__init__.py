"""eqtangents: infinitely wide neural networks on JAX and Equinox."""

from ._kernel import Kernel as Kernel
from ._layer import AbstractLayer as AbstractLayer
from ._layers._activation import AbstractActivation as AbstractActivation
from ._layers.combinators import FanOut as FanOut
from ._layers.combinators import Parallel as Parallel
from ._layers.combinators import Repeat as Repeat
from ._layers.combinators import Serial as Serial
from ._layers.dense import Dense as Dense
from ._layers.fan_in import FanInConcat as FanInConcat
from ._layers.fan_in import FanInProd as FanInProd
from ._layers.fan_in import FanInSum as FanInSum
from ._layers.misc import Identity as Identity
from ._layers.relu import Abs as Abs
from ._layers.relu import ABRelu as ABRelu
from ._layers.relu import LeakyRelu as LeakyRelu
from ._layers.relu import Relu as Relu

__version__ = "0.1.0"
