"""The full-variety CT phantom with and without the liver landmarks of phantom/hilum.py: generation time per case."""

import time, statistics as st
from HepatoblastomaSegLib.phantom import generate_case
from HepatoblastomaSegLib.phantom import case as case_module
original = case_module.sample_hilum
rows = {True: [], False: []}
for index in range(100, 108):
    for with_hilum in (True, False):
        case_module.sample_hilum = original if with_hilum else (lambda rng, an: None)
        wall, cpu = time.perf_counter(), time.process_time()
        c = generate_case("ct", 1000, index, "full", variety="full")
        rows[with_hilum].append((time.perf_counter() - wall, time.process_time() - cpu, c.image.array.size / 1e6))
        del c
for k, name in ((False, "without the landmarks"), (True, "with the landmarks")):
    r = rows[k]
    print(f"{name}: {len(r)} full-size full-variety CT cases (seed 1000, 100-107), "
          f"wall {st.mean(x[0] for x in r):.2f} s, CPU {st.mean(x[1] for x in r):.2f} s per case (mean), "
          f"{st.mean(x[2] for x in r):.1f} megavoxels")
