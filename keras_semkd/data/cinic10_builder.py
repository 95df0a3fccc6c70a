"""tensorflow-datasets builder for CINIC-10, from a manual directory.

CINIC-10 (Darlow et al., 2018, "CINIC-10 is not ImageNet or CIFAR-10")
ships as PNG folders; no download is attempted.  Put the extracted copy in
the manual directory so that it reads

```
<manual_dir>/train/<class>/*.png    90,000 images
<manual_dir>/valid/<class>/*.png    90,000 images
<manual_dir>/test/<class>/*.png     90,000 images
```

(a single `CINIC-10/` folder inside `manual_dir` is accepted too), then

```python
from keras_semkd.data import cinic10_builder  # registers "cinic10"

builder = cinic10_builder.Cinic10(data_dir="/tmp/tfds")
builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
    manual_dir="/path/to/CINIC-10", try_download_gcs=False))
ds = tfds.load("cinic10", data_dir="/tmp/tfds", download=False)
```

or simply `keras_semkd.data.prepare_tfds_cinic10(manual_dir, data_dir)`.
Importing this module registers the builder name `cinic10` with tfds.
"""

import os

import tensorflow_datasets as tfds

from keras_semkd.data.paths import CINIC10_CLASSES
from keras_semkd.data.image_folder import decode_image
from keras_semkd.data.image_folder import scan_image_folder

_SPLITS = {"train": "train", "validation": "valid", "test": "test"}

_DESCRIPTION = """\
CINIC-10: 270,000 32x32 RGB images in the 10 CIFAR-10 classes (CIFAR-10
images plus downsampled ImageNet images), split equally into train,
validation and test (90,000 each)."""

_CITATION = """\
@article{darlow2018cinic,
  title={CINIC-10 is not ImageNet or CIFAR-10},
  author={Darlow, Luke N. and Crowley, Elliot J. and Antoniou, Antreas and
          Storkey, Amos J.},
  journal={arXiv preprint arXiv:1810.03505},
  year={2018}
}"""


class Cinic10(tfds.core.GeneratorBasedBuilder):
    """CINIC-10 read from `manual_dir` (`train|valid|test/<class>/*.png`)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release, from the manual PNG folders."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download and extract CINIC-10 (https://github.com/BayesWatch/cinic-10)
    so that `manual_dir` holds `train/`, `valid/` and `test/`, each with one
    sub-folder of 32x32 PNG images per class: airplane automobile bird cat
    deer dog frog horse ship truck.
    """

    def _info(self):
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(32, 32, 3)),
                "label": tfds.features.ClassLabel(names=list(CINIC10_CLASSES)),
                "filename": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            homepage="https://github.com/BayesWatch/cinic-10",
            citation=_CITATION,
        )

    def _root(self, manual_dir):
        root = os.fspath(manual_dir)
        if not os.path.isdir(os.path.join(root, "train")):
            subdirs = [
                d for d in ("CINIC-10", "cinic-10", "cinic10")
                if os.path.isdir(os.path.join(root, d, "train"))
            ]
            if subdirs:
                root = os.path.join(root, subdirs[0])
        missing = [
            folder for folder in _SPLITS.values()
            if not os.path.isdir(os.path.join(root, folder))
        ]
        if missing:
            raise FileNotFoundError(
                f"CINIC-10 manual directory {root} lacks {missing}. "
                + self.MANUAL_DOWNLOAD_INSTRUCTIONS
            )
        return root

    def _split_generators(self, dl_manager):
        root = self._root(dl_manager.manual_dir)
        return {
            split: self._generate_examples(os.path.join(root, folder))
            for split, folder in _SPLITS.items()
        }

    def _generate_examples(self, split_dir):
        files, labels, class_names = scan_image_folder(split_dir)
        if class_names != CINIC10_CLASSES:
            raise ValueError(
                f"Class folders of {split_dir} are {list(class_names)}, "
                f"expected {list(CINIC10_CLASSES)}."
            )
        for path, label in zip(files, labels):
            image = decode_image(path)  # RGB: CINIC-10 has grayscale PNGs
            if image.shape != (32, 32, 3):
                raise ValueError(
                    f"{path} is {image.shape[1]}x{image.shape[0]}, "
                    "CINIC-10 images are 32x32."
                )
            name = f"{class_names[label]}/{os.path.basename(path)}"
            yield name, {"image": image, "label": int(label),
                         "filename": name}
