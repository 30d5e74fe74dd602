"""What the calcified shell costs the phantom generator: the same full-size full-variety CT cases (series 1011,
cases 0-5) generated with the shell forced on and off (``tumour.SHELL_PROBABILITY`` 1 and 0), CPU seconds per case
(process time, all threads; the build machine was training a model at the time, so wall time is not reported)."""

import time

from HepatoblastomaSegLib.phantom import generate_case
from HepatoblastomaSegLib.phantom import tumour

for probability in (0.0, 1.0, 0.0, 1.0):
    tumour.SHELL_PROBABILITY = probability
    cpu = []
    for index in range(6):
        t = time.process_time()
        generate_case("ct", 1011, index, "full", variety="full")
        cpu.append(time.process_time() - t)
    print(f"shell probability {probability:.0f}: CPU s per case "
          + " ".join(f"{c:.2f}" for c in cpu) + f", mean {sum(cpu) / len(cpu):.2f}")
