"""Bob's side: the ground station's post-processing pipeline (live and offline).

:class:`PassDistiller` is the per-pass core; :func:`distill_pass_file` feeds it from a
pass file, :func:`follow_stream` from the station's event stream during the pass.
Ground-side code never reads what the satellite sent, nor the simulator's seed.
"""

from postprocessing.ground.distiller import Checkpoint, GroundSettings, PassAborted, PassDistiller
from postprocessing.ground.offline import distill_pass_file

__all__ = ["Checkpoint", "GroundSettings", "PassAborted", "PassDistiller", "distill_pass_file"]
