import io

import pytest
from PIL import Image

from pipeline.mbeir.records import CandidateRecord, Example, QueryRecord


def make_example(dataset="cirr", task_id=7, query_txt="is red and has long sleeves", target_txt=None,
                 query_img="mbeir_images/cirr_images/ref.png", target_img="mbeir_images/cirr_images/tgt.png",
                 instruction="Retrieve an image that matches the modification.", cand_modality="image"):
    from pipeline.mbeir.layout import DATASET_IDS, TASKS

    q = QueryRecord(qid=f"{DATASET_IDS[dataset]}:1", query_txt=query_txt, query_img_path=query_img,
                    query_modality=TASKS[task_id][0], query_src_content=None, pos_cand_list=("c:1",),
                    neg_cand_list=(), task_id=task_id, dataset=dataset, dataset_id=DATASET_IDS[dataset],
                    source_file=f"query/train/mbeir_{dataset}_train.jsonl", line_number=1)
    pos = CandidateRecord(did="c:1", txt=target_txt, img_path=target_img, modality=cand_modality)
    return Example(query=q, positives=[pos], instruction=instruction, cand_modality=cand_modality)


def png_bytes(color=(200, 10, 10), size=(900, 600)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def image_store():
    """rel_path -> bytes; tests mutate it to change an image."""
    store = {"mbeir_images/cirr_images/ref.png": png_bytes((200, 10, 10)),
             "mbeir_images/cirr_images/tgt.png": png_bytes((10, 10, 200)),
             "mbeir_images/oven_images/q.jpg": png_bytes((10, 200, 10))}
    return store


@pytest.fixture
def cir_example():
    return make_example()


@pytest.fixture
def oven_example():
    return make_example(dataset="oven", task_id=6, query_txt="What is the name of this building?",
                        target_txt="Eiffel Tower. The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
                        query_img="mbeir_images/oven_images/q.jpg", target_img=None, cand_modality="text",
                        instruction="Retrieve a Wikipedia paragraph that provides an answer to the question.")
