"""Shared fixtures: tiny real-architecture models built from config once per session."""

import pytest

from t2ialign.models.tiny import build_tiny_clip, build_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_pipeline_path(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")
