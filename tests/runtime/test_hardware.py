"""llm.runtime.hardware's processor description: the model name and the matmul-relevant flags of /proc/cpuinfo."""

from llm.runtime.hardware import describe_processor, native_bf16, parse_cpuinfo, slow_matmul_note

# Two processors, as /proc/cpuinfo lists them; flags abridged from real machines.
AMX_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
AVX2_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx f16c avx2 fma bmi2 vaes
"""


def test_amx_processor_has_every_feature_and_native_bf16():
    p = parse_cpuinfo(AMX_CPUINFO)
    assert p == {"model": "Intel(R) Xeon(R) Platinum 8480+",
                 "features": ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]}
    assert native_bf16(p)
    assert describe_processor(p) == ("Intel(R) Xeon(R) Platinum 8480+ "
                                     "(avx2, fma, avx512f, avx512_bf16, amx_tile, amx_bf16)")


def test_avx2_processor_names_what_it_lacks_and_has_no_native_bf16():
    p = parse_cpuinfo(AVX2_CPUINFO)
    assert p == {"model": "AMD EPYC", "features": ["avx2", "fma"]}
    assert not native_bf16(p)
    assert describe_processor(p) == "AMD EPYC (avx2, fma; no avx512f, avx512_bf16, amx_tile, amx_bf16)"


def test_avx512_bf16_without_amx_is_native_bf16():
    p = parse_cpuinfo(AVX2_CPUINFO.replace("avx2 fma", "avx2 fma avx512f avx512_bf16"))
    assert p["features"] == ["avx2", "fma", "avx512f", "avx512_bf16"] and native_bf16(p)


def test_unknown_features_are_said_so():
    p = {"model": "arm64", "features": None}
    assert describe_processor(p) == "arm64 (features unknown)" and not native_bf16(p)


def test_bfloat16_matmuls_get_a_note_only_on_a_cpu_without_native_bf16():
    avx2, amx = parse_cpuinfo(AVX2_CPUINFO), parse_cpuinfo(AMX_CPUINFO)
    note = slow_matmul_note("bfloat16", "cpu", avx2)
    assert note is not None and "AMD EPYC (avx2, fma;" in note and "slower than float32" in note
    assert slow_matmul_note("bfloat16", "cpu", amx) is None  # AMX: the fastest setting
    assert slow_matmul_note("bfloat16", "gpu", avx2) is None  # the host's CPU does not run a GPU's matmuls
    assert slow_matmul_note(None, "cpu", avx2) is None and slow_matmul_note("float32", "cpu", avx2) is None
