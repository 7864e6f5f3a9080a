"""query_instructions.tsv for the sample: UniIR-style prompts, real column order, header row."""

from __future__ import annotations

from pipeline.mbeir.layout import DATASET_IDS, DISPLAY_NAMES, TASKS

HEADER = ("query_modality", "cand_modality", "dataset_name", "dataset_id",
          "prompt_1", "prompt_2", "prompt_3", "prompt_4")

# (dataset, task id) -> four prompts.
PROMPTS: dict[tuple[str, int], tuple[str, ...]] = {
    ("visualnews", 0): ("Identify the news-related image in line with the described event.",
                        "Display an image that best captures the following caption from a news report.",
                        "Retrieve a news photo that matches this caption.",
                        "Find me the news image that goes with this description."),
    ("visualnews", 3): ("Find a caption for the news in the given photo.",
                        "Based on the shown image, retrieve an appropriate news caption.",
                        "Provide a news-related caption for the displayed image.",
                        "Retrieve the caption a news report would use for this picture."),
    ("mscoco", 0): ("Find me an everyday image that matches the given caption.",
                    "Identify the image showcasing the described everyday scene.",
                    "Retrieve an image of an everyday scene that matches this caption.",
                    "Show me an image that best fits the given caption."),
    ("mscoco", 3): ("Find an image caption describing the following everyday image.",
                    "Retrieve a caption that describes the scene in this image.",
                    "Provide a description of the everyday image shown.",
                    "Find the caption that best matches this picture."),
    ("fashion200k", 0): ("Based on the following fashion description, retrieve the best matching image.",
                         "Match the provided description to the correct fashion item photo.",
                         "Identify the fashion image that corresponds to this product description.",
                         "Find the product photo described by the following text."),
    ("fashion200k", 3): ("Find a product description for the fashion item in the image.",
                         "Based on the displayed image, retrieve the corresponding fashion description.",
                         "Retrieve the description of the clothing shown.",
                         "Provide the product text that matches this fashion photo."),
    ("webqa", 1): ("Retrieve passages from Wikipedia that provide answers to the following question.",
                   "Find a Wikipedia paragraph that answers this question.",
                   "Locate a passage that responds to the question below.",
                   "Provide a Wikipedia text snippet answering the following question."),
    ("webqa", 2): ("Find a Wikipedia image that answers this question.",
                   "Retrieve an image and its caption from Wikipedia that answer the question.",
                   "Provide an image with a description that responds to the following question.",
                   "Locate a captioned Wikipedia image that answers this question."),
    ("edis", 2): ("Find a news image that matches the provided caption.",
                  "Retrieve a news photo with its headline that matches this caption.",
                  "Identify the news image and headline described below.",
                  "Provide a news image with a headline in line with this text."),
    ("nights", 4): ("Find a day-to-day image that looks similar to the provided image.",
                    "Retrieve an image that is visually similar to this one.",
                    "Identify an image that closely resembles the given picture.",
                    "Show me a picture that looks like this image."),
    ("oven", 6): ("Retrieve a Wikipedia paragraph that provides an answer to the given query about the image.",
                  "Determine the Wikipedia snippet that identifies the visual entity in the image.",
                  "Find a Wikipedia text that answers the question about this picture.",
                  "Locate the Wikipedia description of the entity shown in the image."),
    ("oven", 8): ("Retrieve a Wikipedia image-description pair that provides evidence for the question of this image.",
                  "Determine the Wikipedia image-snippet pair that clarifies the entity in this picture.",
                  "Find a Wikipedia page with an image that identifies the entity shown.",
                  "Locate a Wikipedia image and text about the entity in this picture."),
    ("infoseek", 6): ("Using the provided image and question, find a Wikipedia passage with the answer.",
                      "Retrieve a Wikipedia paragraph that answers the question about the image.",
                      "Find the text that answers this question about the pictured entity.",
                      "Provide a Wikipedia snippet that answers the question for this image."),
    ("infoseek", 8): ("Find a Wikipedia image-text pair that answers the question about this image.",
                      "Retrieve a Wikipedia image and passage that answer the question.",
                      "Locate an image with text from Wikipedia that answers this question.",
                      "Provide a Wikipedia image-description pair answering the question about the picture."),
    ("fashioniq", 7): ("Find a fashion image that aligns with the reference image and style note.",
                       "With the reference image and modification instructions, find the described fashion image.",
                       "Retrieve the fashion item that matches the reference image changed as described.",
                       "Identify the clothing image that reflects the requested change to this item."),
    ("cirr", 7): ("Retrieve a day-to-day image that aligns with the modification instructions of the provided image.",
                  "Find an image that matches the reference image after the described change.",
                  "Identify the picture that shows this image modified as instructed.",
                  "Show me the image that results from applying this change to the given picture."),
}


def instructions_tsv() -> str:
    """The whole TSV text, header first, rows in dataset id then task order."""
    lines = ["\t".join(HEADER)]
    for (dataset, task), prompts in sorted(PROMPTS.items(), key=lambda kv: (DATASET_IDS[kv[0][0]], kv[0][1])):
        q, c = TASKS[task]
        lines.append("\t".join((q, c, DISPLAY_NAMES[dataset], str(DATASET_IDS[dataset]), *prompts)))
    return "\n".join(lines) + "\n"
