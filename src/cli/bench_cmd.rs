//! `cyclestudio bench`: runs the benchmark cases (each in a child process) and prints the table.

use super::BenchArgs;
use anyhow::Result;

pub fn run(a: BenchArgs) -> Result<()> {
    let settings = crate::bench::Settings { device: a.device.clone(), precision: a.precision, warmup: a.warmup, repeats: a.repeats, tensorboard: !a.no_tensorboard };
    if let Some(id) = a.case_in_process {
        let r = crate::bench::run_case(&id, &settings)?;
        outln!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let ids: Vec<String> = if a.cases.is_empty() { crate::bench::CASES.iter().map(|c| c.id.to_string()).collect() } else { a.cases };
    // Which kernels bf16 runs on (AMX, AVX512-BF16) changes its speed several-fold: say so.
    let bf16_cpu = a.precision == crate::ops::Precision::Bf16 && a.device == "cpu";
    let kernels = bf16_cpu.then(crate::ops::precision::bf16_hardware).flatten().map(|isa| format!(" on {isa}")).unwrap_or_default();
    eprintln!("benchmarking {} on {} in {}{kernels} ({} warm-up, {} timed runs each)…", ids.join(", "), a.device, a.precision, a.warmup, a.repeats);
    if crate::ops::huge_pages_in_use() {
        eprintln!("heap in transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1; =0 turns them off)");
    }
    let results = crate::bench::run_all(&ids, &settings)?;
    out!("{}", crate::bench::table(&results));
    if let Some(p) = a.json {
        crate::util::atomic_write(&p, serde_json::to_string_pretty(&results)?.as_bytes())?;
    }
    Ok(())
}
