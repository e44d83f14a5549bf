"""Real talking-head video -> clip records (``gohd-preprocess``).

decode     PyAV: frames resampled to 25 fps by timestamp (rotation applied), audio to 16 kHz mono;
           both streamed.
faces      dlib HOG face boxes and 68 landmarks; the official 256x256 crop.
align      the estimators' inputs: Deep3DFaceRecon's 5-point alignment, L2CS's face crop.
segment    clip boundaries: shot cuts, face loss, box jumps, minimum length.
estimate   the ported Deep3DFaceRecon and L2CS-Net, batched and jitted.
describe   per-frame face detection and descriptors (shared with preprocess); a reference video
           -> its 25 fps descriptors (``gohd describe``).
preprocess one video -> clips; the resumable, sharded dataset writer and its report.
cli        the ``gohd-preprocess`` command.
"""
