"""Image loading and feature extractors (scikit-learn transformers).

Imports numpy, Pillow, scikit-image, scikit-learn and joblib; dlib (the optional
``[embeddings]`` extra) and TensorFlow (the Keras translation of dlib's descriptor
network, :mod:`features.face_resnet`) only when face descriptors are computed.
"""
from features.embeddings import DlibFaceDescriptor
from features.extract import EXTRACTORS, extract_features, file_digests, make_extractor
from features.gabor import GaborFeatures, gabor_energies
from features.hog import HOGFeatures, hog_batch
from features.io import (ImageLoadError, LoadReport, image_from_array, load_image,
                         load_images, map_image_chunks)
from features.lbp import LBPFeatures, lbp_codes, lbp_histograms
from features.loader import ImageLoader
from features.pixels import PixelFeatures, eigenfaces

__all__ = [
    "DlibFaceDescriptor", "EXTRACTORS", "GaborFeatures", "HOGFeatures", "ImageLoadError",
    "ImageLoader", "LBPFeatures", "LoadReport", "PixelFeatures", "eigenfaces",
    "extract_features", "file_digests", "gabor_energies", "hog_batch", "image_from_array",
    "lbp_codes", "lbp_histograms", "load_image", "load_images", "make_extractor",
    "map_image_chunks",
]
