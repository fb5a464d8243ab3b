"""Old home of ppflow's own folder format and of the file helpers; the names stay importable from here until their
importers switch to ppflow.io, ppflow.models.pretrained and ppflow.convert.load."""

from ..io import (  # noqa: F401
    HASH_KEY,
    DamagedFileError,
    DiskFullError,
    check_sha256,
    content_sha256,
    free_bytes,
    one_line,
    read_weights,
    refused_pickle,
    remove_quietly,
    save_error,
    state_nbytes,
    verify_state,
    with_sha256,
    write_text_atomic,
)
from ..models.backbone import CONFIG, FORMAT_TAG, WEIGHTS  # noqa: F401
from ..models.pretrained import (  # noqa: F401
    check_state_shapes,
    is_pretrained_dir,
    load_pretrained,
    load_state_strict,
    model_config_from_dict,
    model_field_problem,
    read_config,
    save_pretrained,
)
from .load import resolve_path  # noqa: F401
