"""The module's code that needs neither Qt nor MRML: what runs around the library, and is testable with plain Python.

- :mod:`.process`: one command in a background process, followed without blocking (progress, log, cancel);
- :mod:`.worker`: the warm ``hbseg serve --stdio`` worker kept between clicks (restarted after a crash);
- :mod:`.models`: the model catalogue (bundled and imported bundles), modality guess, memory estimate;
- :mod:`.diagnostics`: the environment report and the GPU probe; :mod:`.failures`: a failed run in plain words;
- :mod:`.dependencies`: the packages the module installs and the versions it pins;
- :mod:`.compatibility`: the supported 3D Slicer versions (standard library only, runs on Python 3.9);
- :mod:`.selftest`: the phantom and model the module's self-test uses.

The MRML glue (:mod:`HepatoblastomaSegMRML`) and the widget use these; nothing here imports them.
"""
