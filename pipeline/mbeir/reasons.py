"""Reject reason codes for M-BEIR input, one place. `DESCRIPTIONS` gives each a one-line meaning."""

from __future__ import annotations

LINE_TOO_LONG = "line_too_long"
INVALID_JSON = "invalid_json"
TOO_DEEPLY_NESTED = "too_deeply_nested"
TRUNCATED_LINE = "truncated_line"
INVALID_UTF8 = "invalid_utf8"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
BAD_FIELD_TYPE = "bad_field_type"
UNKNOWN_TASK = "unknown_task"
UNKNOWN_MODALITY = "unknown_modality"
UNSAFE_IMAGE_PATH = "unsafe_image_path"
MISSING_IMAGE = "missing_image"
IMAGE_NOT_A_FILE = "image_not_a_file"
IMAGE_TOO_LARGE = "image_too_large"
UNREADABLE_IMAGE = "unreadable_image"
DECOMPRESSION_BOMB = "decompression_bomb"
DUPLICATE_QID = "duplicate_qid"
DUPLICATE_DID = "duplicate_did"
EMPTY_POSITIVES = "empty_positives"
POSITIVE_NOT_FOUND = "positive_not_found"
UNKNOWN_INSTRUCTION = "unknown_instruction"
PROMPT_TOO_LONG = "prompt_too_long"

DESCRIPTIONS: dict[str, str] = {
    LINE_TOO_LONG: "the line is longer than --max_line_bytes; rejected unparsed",
    INVALID_JSON: "the line is not valid JSON (RFC 8259: NaN and Infinity are not numbers)",
    TOO_DEEPLY_NESTED: "the line nests arrays/objects deeper than the JSON parser can follow",
    TRUNCATED_LINE: "the file's last line has no newline and does not parse (cut-off download or write)",
    INVALID_UTF8: "the line is not valid UTF-8, or a \\u escape in it is a lone surrogate",
    NOT_OBJECT: "the line is valid JSON but not an object",
    MISSING_FIELD: "a required field is absent or null (incl. text/image the modality needs)",
    BAD_FIELD_TYPE: "a field has the wrong type, or an id is not exactly \"{dataset id}:{n}\" (decimal, no "
                    "spaces, newlines or leading zeros)",
    UNKNOWN_TASK: "task_id is not an M-BEIR task, or disagrees with the query modality",
    UNKNOWN_MODALITY: "modality is not one of text, image, image,text",
    UNSAFE_IMAGE_PATH: "image path is absolute, has a scheme, or leads out of the M-BEIR root (also via a symlink)",
    MISSING_IMAGE: "the image file does not exist under the M-BEIR root",
    IMAGE_NOT_A_FILE: "the image path is a folder, FIFO, device or socket, not a regular file; never read",
    IMAGE_TOO_LARGE: "the image file is over the image gate's byte cap (64 MiB); never read",
    UNREADABLE_IMAGE: "the image is truncated, cannot be decoded, or is not JPEG, PNG, WebP, GIF, BMP or TIFF",
    DECOMPRESSION_BOMB: "the image's header claims more pixels than the image gate's cap (Pillow's default "
                        "MAX_IMAGE_PIXELS, 89,478,485); never decoded",
    DUPLICATE_QID: "the qid was already seen in the same file",
    DUPLICATE_DID: "a pool line repeats an earlier line's did with different content; the first line is used",
    EMPTY_POSITIVES: "pos_cand_list is empty",
    POSITIVE_NOT_FOUND: "no positive did is present in the candidate pool",
    UNKNOWN_INSTRUCTION: "query_instructions.tsv has no prompt for (dataset id, query modality, cand modality)",
    PROMPT_TOO_LONG: "the teacher request would exceed --max_prompt_tokens (estimate); it was never sent",
}
ALL: tuple[str, ...] = tuple(DESCRIPTIONS)
