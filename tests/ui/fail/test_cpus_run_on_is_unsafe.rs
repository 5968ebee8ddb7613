// Impersonating a CPU is the caller's promise that no other thread uses that CPU at the same
// time (the `CpuProvider` contract): it takes `unsafe`.
use chargetree::cpu::TestCpus;

fn main() {
    let _ = TestCpus::run_on(0, || 1);
}
