"""Datasets, dataset descriptions and transforms."""
from .description import CITYSCAPES, Category, DatasetDescription, get_description, register_description

__all__ = ["CITYSCAPES", "Category", "DatasetDescription", "get_description", "register_description"]
