"""
Reading checkpoints without running code in them. A checkpoint is a pickle, and unpickling can call any
function the file names; load() unpickles tensors and plain Python types only (torch.load with
weights_only=True), which is all this project's checkpoints hold. A file that needs more (a Lightning .ckpt
with config objects, or one made to run code) is refused with one line that names the file and the way out:
trust=True (--trust_checkpoint on every command that loads checkpoints) unpickles it in full, which runs any
code it carries: only for files from a source you trust.

The global RNG streams a checkpoint stores (rng_state) are plain types too: numpy's key array as a list of
ints. Checkpoints written before held the ndarray itself; they still load, through OLD_NUMPY_RNG.
"""

import pickle
import random
import re

import numpy as np
import torch

# What unpickling np.random.get_state()'s ndarray needs, and nothing more: numpy's array rebuilder (named
# numpy._core... by numpy 2, numpy.core... by numpy 1), the array type, np.dtype and the uint32 dtype's class
_reconstruct = np.zeros(0).__reduce__()[0]
OLD_NUMPY_RNG = [
    (_reconstruct, 'numpy._core.multiarray._reconstruct'),
    (_reconstruct, 'numpy.core.multiarray._reconstruct'),
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
]


class Refused(ValueError):
    """A file that holds more than tensors and plain Python types; its message is one line with the way
    out."""


def load(path, trust=False, mmap=False):
    """What the checkpoint file at path holds, its tensors on the CPU. Only tensors and plain Python types are
    unpickled (and OLD_NUMPY_RNG), so loading runs no code from the file; a file that needs more raises
    Refused. trust=True unpickles it in full, which can run any code in it: only for files from a source you
    trust. mmap: map the tensors from the file instead of reading them (torch.save's zip format)."""
    if trust:
        return torch.load(path, map_location='cpu', weights_only=False, mmap=mmap)
    with torch.serialization.safe_globals(OLD_NUMPY_RNG):
        try:
            return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            needs = _unsafe_globals(path, e)
            # nothing named beyond the allowed types: a damaged file or no checkpoint, not a foreign one
            if not needs:
                raise
            raise Refused(
                f"{path} is not a plain checkpoint: unpickling it needs {', '.join(needs)}, which "
                f"can run code from the file; pass --trust_checkpoint only for a file from a source "
                f"you trust"
            ) from None
        except KeyError as e:
            # the weights-only reader of torch's legacy format meets some bytes that are no pickle (a text
            # file) with a KeyError; callers take a KeyError for keys that do not match, so say what it is
            raise pickle.UnpicklingError(f"{path} is not a pickle (opcode {e} unknown)") from None


def _unsafe_globals(path, error):
    """The functions and classes that a checkpoint's pickle names beyond what load() allows (e.g.
    ['io.open']): read off a zip checkpoint's opcodes without unpickling it; in torch's legacy format, the one
    that the weights-only reader stopped at, as its error names it."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint
        match = re.search(r'GLOBAL (\S+)', str(error))
        return [match[1]] if match else []


def rng_state(cuda):
    """The global RNG streams as tensors and plain types: torch, numpy, Python's random and, if cuda,
    CUDA's."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    # numpy's key array as a list of ints: the ndarray would need numpy's types to unpickle
    numpy_state = (name, key.tolist(), pos, has_gauss, gauss)
    cuda_state = torch.cuda.get_rng_state_all() if cuda else None
    return dict(torch=torch.get_rng_state(), numpy=numpy_state, python=random.getstate(), cuda=cuda_state)


def set_rng_state(rng, cuda):
    """Restore what rng_state stored (numpy's key a list) or what older checkpoints stored (an ndarray)."""
    name, key, pos, has_gauss, gauss = rng['numpy']
    torch.set_rng_state(rng['torch'])
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(rng['python'])
    # a CPU run leaves a CUDA run's state alone
    if cuda and rng['cuda'] is not None:
        torch.cuda.set_rng_state_all(rng['cuda'])
