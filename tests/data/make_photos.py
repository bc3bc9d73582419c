"""Writes tests/data/photos/*.jpg: small re-encodings of public real photos (see
tests/data/photos/README.md for their origin and licences). Run once; the output is
committed. Needs scikit-image and the face_recognition 1.3.0 sdist unpacked:

  pip download face_recognition==1.3.0 --no-deps --no-binary :all: -d /tmp/fr
  tar xzf /tmp/fr/face_recognition-1.3.0.tar.gz -C /tmp/fr
  python tests/data/make_photos.py /tmp/fr/face_recognition-1.3.0/tests/test_images
"""

import sys
from pathlib import Path

from PIL import Image

MAX_SIDE = 640  # keeps every file well under 150 KB; faces stay > 100 px wide
OUT = Path(__file__).parent / "photos"


def save(image: Image.Image, name: str):
  image = image.convert("RGB")
  scale = MAX_SIDE / max(image.size)
  if scale < 1:
    image = image.resize((round(image.width * scale), round(image.height * scale)),
                         Image.LANCZOS)
  image.save(OUT / name, "JPEG", quality=88)
  print(name, image.size, (OUT / name).stat().st_size, "bytes")


def main(face_recognition_images: str):
  from skimage import data
  OUT.mkdir(exist_ok=True)
  save(Image.fromarray(data.astronaut()), "astronaut.jpg")
  save(Image.fromarray(data.chelsea()), "chelsea_cat.jpg")
  for name in ("obama", "obama2", "obama3", "biden"):
    with Image.open(Path(face_recognition_images) / f"{name}.jpg") as im:
      save(im, f"{name}.jpg")


if __name__ == "__main__":
  main(sys.argv[1])
