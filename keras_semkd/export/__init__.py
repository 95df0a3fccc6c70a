"""Student-only SavedModel export for TF Serving, and its reload check."""

from keras_semkd.export.serving import DEFAULT_SERVING_BASE_PATH
from keras_semkd.export.serving import INPUT_NAME
from keras_semkd.export.serving import METADATA_PATH
from keras_semkd.export.serving import OUTPUT_NAMES
from keras_semkd.export.serving import SIGNATURE_NAME
from keras_semkd.export.serving import ExportMismatchError
from keras_semkd.export.serving import ServingExport
from keras_semkd.export.serving import clean_stale_temporaries
from keras_semkd.export.serving import default_class_names
from keras_semkd.export.serving import export_student
from keras_semkd.export.serving import keras_probabilities
from keras_semkd.export.serving import list_versions
from keras_semkd.export.serving import load_student
from keras_semkd.export.serving import read_metadata
from keras_semkd.export.serving import reload_check
from keras_semkd.export.serving import write_models_config
