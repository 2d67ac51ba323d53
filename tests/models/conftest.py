"""Tiny adapters and records shared by the model tests (built once per session; random weights, offline)."""

import pytest
from PIL import Image, ImageDraw

from evl_ecg.models import build_tiny_pulse, build_tiny_student, build_tiny_teacher

RECORDS = [
    {
        "id": "ptb-0001",
        "image": "ptb-xl/0001.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is the rhythm of this ECG?"},
            {"from": "gpt", "value": "Sinus rhythm with first degree AV block."},
            {"from": "human", "value": "Any ST changes? Answer: yes/no."},
            {"from": "gpt", "value": "No significant ST changes; NORM (µV ±5)."},
        ],
    },
    {
        "id": "code15-0002",
        "image": "code15/0002.png",
        "conversations": [
            {"from": "human", "value": "Please determine the diagnosis: AF, RBBB, LBBB, SB, ST.<image>"},
            {"from": "gpt", "value": "AF; RBBB"},
        ],
    },
]


def corpus(records=RECORDS):
    return [t["value"].replace("<image>", "") for r in records for t in r["conversations"]] * 5


def ecg_image(width=512, height=384, seed=0):
    img = Image.new("RGB", (width, height), (255, 250, 245))
    draw = ImageDraw.Draw(img)
    for x in range(0, width, 16):
        draw.line((x, 0, x, height), fill=(240, 160, 160))
    for k in range(4):
        y = (k + 1) * height // 5
        pts = [(x, y - (25 if (x + 13 * seed + 40 * k) % 97 < 4 else 0)) for x in range(0, width, 3)]
        draw.line(pts, fill=(0, 0, 0), width=2)
    return img


@pytest.fixture(scope="session")
def records():
    return RECORDS


@pytest.fixture(scope="session")
def image():
    return ecg_image()


@pytest.fixture(scope="session")
def make_image():
    return ecg_image


@pytest.fixture(scope="session")
def teacher():
    return build_tiny_teacher(corpus(), seed=0)


@pytest.fixture(scope="session")
def student():
    return build_tiny_student(corpus(), seed=0)


@pytest.fixture(scope="session")
def pulse():
    return build_tiny_pulse(corpus(), seed=0)


@pytest.fixture(scope="session")
def adapters(teacher, student, pulse):
    return {"teacher": teacher, "student": student, "pulse": pulse}
