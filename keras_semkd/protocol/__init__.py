"""Long accuracy protocols that resume anywhere (see `core`), and the SAKD
protocols of issue #9 (`sakd`)."""

from keras_semkd.protocol.core import REQUIRED_FIELDS
from keras_semkd.protocol.core import Progress
from keras_semkd.protocol.core import ResultsFile
from keras_semkd.protocol.core import git_commit
from keras_semkd.protocol.core import mean_std
from keras_semkd.protocol.core import paired_comparison
from keras_semkd.protocol.core import run_pool
