//! The cluster features on a real Slurm: a single-node cluster (munged, slurmctld, slurmd)
//! started by this test in a temporary directory, then
//!
//! 1. `convert … --shard auto` in two job arrays: docs/clusters.md's own array script
//!    (`--array=0-7`) and the stepped `--array=10-14:2`: each task names its part on stderr
//!    (`--shard auto: part K/N`), the parts are 1/N … N/N, the tasks' "converted N" sum to the
//!    number of inputs, and every input has exactly one output;
//! 2. docs/clusters.md's requeueable training script (`#SBATCH --requeue --signal=B:USR1@120`,
//!    running `train … --resume-or-start` in the background), given USR1 mid-run as Slurm gives
//!    it before the time limit (to the batch shell only): the script's trap stops the run
//!    (SIGTERM; cyclestudio saves a checkpoint and exits 0) and calls `scontrol requeue`, Slurm
//!    starts the job again, it resumes from that checkpoint and finishes with weights and
//!    optimizer state byte-identical to an uninterrupted run.
//!
//! The documentation's scripts run as written except for the cyclestudio command line itself
//! (the tiny dataset and model here, the binary under test) and `--cpus-per-task`/`--time`,
//! overridden on sbatch's command line to fit this 2-CPU node.
//!
//! Needs: root, and Debian's `slurmctld slurmd slurm-client munge` (Slurm 22.05 on bookworm):
//! `apt-get install -y slurmctld slurmd slurm-client munge`. Nothing system-wide is used or
//! changed: the munge key, munged's socket, slurm.conf (written below), the state, spool and
//! log directories are all in the temporary directory, the daemons listen on free ports on
//! 127.0.0.1, and every Slurm command gets `SLURM_CONF` pointing at this cluster. The daemons
//! run in the foreground as children of the test and are stopped, with any job process left,
//! when the test ends, failed or not (`Cluster`'s Drop). Where the tools are missing, the test
//! does not run as root, or the cluster does not come up, it prints `skipped: …` and passes;
//! with `CS_SLURM_REQUIRED=1` those are failures instead. A failure prints the daemons' logs
//! and keeps the temporary directory (its path is printed).
//!
//! Slurm settings that matter here: `AuthInfo=…,cred_expire=5` (a requeued job may start
//! again only `cred_expire` seconds after the requeue; the default is 120 s),
//! `SchedulerParameters=bf_interval=1,sched_interval=2` (the scheduler then notices it soon),
//! `SlurmdParameters=config_overrides` (the node is CPUs=2 whatever the machine has),
//! `ProctrackType=proctrack/linuxproc` and `TaskPlugin=task/none` (no cgroups). On this
//! project's 2-core machine it takes 22 s (40 s with both cores kept busy by other work), most
//! of it the requeued job's wait (~7 s) and the two trainings of 400 steps sharing the cores.
#![cfg(unix)] // Slurm, munge and Unix permissions

mod common;
use common::{assert_same_checkpoint, tiny_dataset, write_pngs};

use cyclestudio::checkpoint::load_generation;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cyclestudio");
/// Steps of the requeued training: it is requeued within its first tens of steps.
const ITERS: u64 = 400;
const TOOLS: [&str; 8] = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel"];
const TERMINAL: [&str; 9] = ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY"];

#[test]
fn job_arrays_and_a_requeued_training_on_a_real_slurm() {
    let started = Instant::now();
    let cluster = match Cluster::start() {
        Ok(c) => c,
        Err(why) => {
            if std::env::var_os("CS_SLURM_REQUIRED").is_some_and(|v| v == "1") {
                panic!("CS_SLURM_REQUIRED=1 but: {why}");
            }
            eprintln!("skipped: {why}");
            return;
        }
    };
    eprintln!("slurm: cluster up in {:.1} s", started.elapsed().as_secs_f64());
    let d = cluster.root.clone();
    let ds = tiny_dataset(&d);
    let ds = ds.to_str().unwrap();

    // The requeued training first: it takes a CPU at once, the arrays' tasks share the other.
    let job_dir = d.join("job");
    std::fs::create_dir_all(&job_dir).unwrap();
    let train_out = job_dir.join("train.out");
    let train_line = train_command(ds);
    let train_script = doc_script("cyclestudio-train", "cyclestudio train", &format!("{train_line} &"));
    let train = cluster.sbatch(&["--cpus-per-task=1", "--time=10"], &job_dir, &train_out, None, &train_script);

    // The model the arrays convert with, and a tree of images (12, in sub-folders).
    let model = tiny_model(&d, ds);
    let mut inputs = BTreeSet::new();
    for sub in ["", "x", "x/y", "z"] {
        for p in write_pngs(&d.join("tree").join(sub), 3, 24, 20) {
            inputs.insert(p.strip_prefix(d.join("tree")).unwrap().to_path_buf());
        }
    }
    let logs = d.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let convert = |out: &str| format!("exec {} convert tree --to color -o {out} --model {} --shard auto", quote(BIN), quote(model.to_str().unwrap()));
    let arrays: Vec<(&str, Vec<u32>, String)> = [("out_doc", (0..8).collect(), None), ("out_b", vec![10, 12, 14], Some("10-14:2"))]
        .into_iter()
        .map(|(out, tasks, range): (&str, Vec<u32>, Option<&str>)| {
            let (opts, script) = match range {
                // docs/clusters.md's script, with its own #SBATCH --array=0-7.
                None => (vec!["--cpus-per-task=1".to_string()], doc_script("cyclestudio-convert", "exec cyclestudio convert", &convert(out))),
                Some(range) => (vec![format!("--array={range}"), "--job-name=cs-convert".into()], convert(out)),
            };
            let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
            let (stdout, stderr) = (logs.join(format!("convert_{out}_%a.out")), logs.join(format!("convert_{out}_%a.err")));
            (out, tasks, cluster.sbatch(&opts, &d, &stdout, Some(&stderr), &script))
        })
        .collect();

    // Requeue the training once it is under way (its log has lines).
    let log = job_dir.join("checkpoints/run/log.jsonl");
    cluster.wait_for(&format!("training job {train} to log its first steps"), Duration::from_secs(90), || {
        if let Some(s) = cluster.finished(&train) {
            panic!("training job {train} ended ({s}) before it was requeued:\n{}", read(&train_out));
        }
        std::fs::metadata(&log).is_ok_and(|m| m.len() > 0)
    });
    // What `#SBATCH --signal=B:USR1@120` does 120 s before the time limit: USR1 to the batch
    // shell alone (not its children), which runs the script's trap.
    let shell = cluster.batch_shell(&train);
    let usr1 = Command::new("kill").args(["-USR1", &shell.to_string()]).output().unwrap();
    assert!(usr1.status.success(), "kill -USR1 {shell}: {}", text(&usr1));
    let requeued_at = Instant::now();

    // The uninterrupted run of the same command, here, while Slurm restarts the job.
    let ref_dir = d.join("reference");
    std::fs::create_dir_all(&ref_dir).unwrap();
    let mut reference = KillOnDrop(Some(
        Command::new("sh").arg("-c").arg(&train_line).current_dir(&ref_dir).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(),
    ));

    // The training: stopped by the requeue, started again by Slurm, resumed, finished.
    let states = cluster.wait_done(&train, Duration::from_secs(120));
    let said = read(&train_out);
    let brief: Vec<&str> = said.lines().filter(|l| !l.starts_with("step ")).collect();
    eprintln!("slurm: the training job's output (without its step lines):\n{}", brief.join("\n"));
    eprintln!("slurm: the requeued job ran again and finished {:.1} s after the requeue", requeued_at.elapsed().as_secs_f64());
    assert_eq!(states, format!("{train}:COMPLETED"), "{said}");
    assert!(said.contains("no checkpoint yet, starting the run"), "{said}");
    let restarts = text(&cluster.run(&["scontrol", "show", "job", &train]));
    assert!(restarts.contains("Restarts=1"), "Slurm did not requeue the job once:\n{restarts}\n{said}");
    let stopped_at: u64 = said
        .split("stopped run at step ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the first run did not stop with a checkpoint:\n{said}"));
    assert!((1..ITERS).contains(&stopped_at), "stopped at step {stopped_at} of {ITERS}:\n{said}");
    assert!(said.contains("checkpoint saved"), "{said}");
    assert!(said.contains("resuming the run's checkpoint"), "the second run did not resume:\n{said}");
    assert!(said.contains(&format!("steps {stopped_at}..{ITERS}")), "the second run did not start at step {stopped_at}:\n{said}");
    assert!(said.contains(&format!("finished run at step {ITERS}")), "{said}");
    let reference = reference.0.take().unwrap().wait_with_output().unwrap();
    assert!(reference.status.success(), "uninterrupted run: {}", text(&reference));
    let requeued = load_generation(&job_dir.join("checkpoints/run")).unwrap();
    let straight = load_generation(&ref_dir.join("checkpoints/run")).unwrap();
    assert_eq!((requeued.manifest.step, straight.manifest.step), (ITERS, ITERS));
    assert_same_checkpoint(&requeued, &straight, "requeued vs uninterrupted run");

    // The arrays: every input converted exactly once between each array's three tasks.
    for (out, tasks, id) in &arrays {
        let states = cluster.wait_done(id, Duration::from_secs(120));
        let mut parts = BTreeSet::new();
        let mut converted = 0;
        for task in tasks {
            let stdout = read(&logs.join(format!("convert_{out}_{task}.out")));
            let stderr = read(&logs.join(format!("convert_{out}_{task}.err")));
            let said = format!("task {id}_{task} ({states}):\nstdout:\n{stdout}\nstderr:\n{stderr}");
            eprintln!("slurm: {said}");
            let n: usize = stdout
                .split("converted ")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("no 'converted N' on stdout of {said}"));
            converted += n;
            let part = stderr
                .split("--shard auto: part ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_else(|| panic!("no '--shard auto: part K/N' on stderr of {said}"));
            assert!(parts.insert(part.to_string()), "part {part} twice; {said}");
        }
        assert!(states.split(' ').all(|s| s.ends_with(":COMPLETED")), "array {id} ({out}): {states}");
        let n = tasks.len();
        assert_eq!(parts, (1..=n).map(|k| format!("{k}/{n}")).collect(), "array {id} ({out})");
        assert_eq!(converted, inputs.len(), "array {id} ({out}): the tasks' 'converted N' do not sum to the inputs");
        let outputs: BTreeSet<PathBuf> = walk(&d.join(out)).into_iter().map(|p| p.strip_prefix(d.join(out)).unwrap().to_path_buf()).collect();
        let expected: BTreeSet<PathBuf> = inputs.iter().map(|p| p.with_extension("png")).collect();
        assert_eq!(outputs, expected, "array {id} ({out}): not exactly one output per input");
    }

    eprintln!("slurm: stopped at step {stopped_at} of {ITERS} by the requeue; all done in {:.1} s", started.elapsed().as_secs_f64());
}

/// The sh block of docs/clusters.md whose `#SBATCH --job-name=` is `job`, with the command line
/// that starts with `command` (and its continuation lines) replaced by `replacement`.
fn doc_script(job: &str, command: &str, replacement: &str) -> String {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/clusters.md")).unwrap();
    let block = page
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains(&format!("#SBATCH --job-name={job} ")))
        .unwrap_or_else(|| panic!("docs/clusters.md has no sh block with #SBATCH --job-name={job}"));
    let (mut out, mut replacing, mut found) = (String::new(), false, false);
    for line in block.lines() {
        if line.trim_start().starts_with(command) {
            (replacing, found) = (true, true);
            out += replacement;
            out.push('\n');
        }
        if !replacing {
            out += line;
            out.push('\n');
        }
        replacing &= line.ends_with('\\');
    }
    assert!(found, "docs/clusters.md's {job} script has no line starting with {command:?}:\n{block}");
    out
}

/// A child process killed if the test fails before waiting for it.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The training command line (run in the job's directory and in the reference's).
fn train_command(ds: &str) -> String {
    let iters = ITERS.to_string();
    let args = [
        "train", "--dataset", ds, "--name", "run", "--generator", "resnet_2blocks", "--ngf", "4", "--ndf", "4", "--size", "32", "--iters", &iters,
        "--save-every", "1000", "--sample-every", "1000", "--quiet", "--seed", "3", "--resume-or-start",
    ];
    std::iter::once(quote(BIN)).chain(args.iter().map(|a| quote(a))).collect::<Vec<_>>().join(" ")
}

/// A tiny trained model at <dir>/checkpoints/tiny.
fn tiny_model(dir: &Path, ds: &str) -> PathBuf {
    let out = Command::new(BIN)
        .current_dir(dir)
        .args(["train", "--dataset", ds, "--name", "tiny", "--generator", "resnet_2blocks", "--ngf", "4", "--ndf", "4", "--size", "32", "--iters", "2", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    dir.join("checkpoints/tiny")
}

/// A single-node Slurm cluster in a temporary directory. Dropping it cancels the jobs and stops
/// the daemons and anything left of the jobs.
struct Cluster {
    tmp: Option<tempfile::TempDir>,
    /// The temporary directory (also the place for the test's files).
    root: PathBuf,
    /// slurm.conf, also the mark of this cluster's processes (`SLURM_CONF` in their environment).
    conf: PathBuf,
    state: PathBuf,
    node: String,
    daemons: Vec<(&'static str, Child)>,
    jobs: std::cell::RefCell<Vec<String>>,
}

impl Cluster {
    /// Starts munged, slurmctld and slurmd and waits until the node is idle; says why not.
    fn start() -> Result<Self, String> {
        let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| find_tool(t).is_none()).collect();
        if !missing.is_empty() {
            return Err(format!(
                "Slurm is not installed (missing {}; apt-get install -y slurmctld slurmd slurm-client munge)",
                missing.join(", ")
            ));
        }
        let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).ok();
        if uid.as_deref() != Some("0") {
            return Err("the Slurm test starts slurmd, which needs root".into());
        }
        let tmp = tempfile::Builder::new().prefix("cs-slurm").tempdir().map_err(|e| e.to_string())?;
        let root = tmp.path().to_path_buf();
        let state = root.join("slurm");
        let mut c = Cluster {
            tmp: Some(tmp),
            conf: state.join("slurm.conf"),
            root,
            state,
            node: String::new(),
            daemons: Vec::new(),
            jobs: Default::default(),
        };
        c.bring_up().map_err(|why| format!("the Slurm cluster did not come up: {why}\n{}", c.diagnostics()))?;
        Ok(c)
    }

    fn bring_up(&mut self) -> Result<(), String> {
        let s = self.state.clone();
        let io = |e: std::io::Error| e.to_string();
        for (sub, mode) in [("", 0o755), ("munge", 0o700), ("run", 0o755), ("state", 0o700), ("spool", 0o755), ("log", 0o755)] {
            std::fs::create_dir_all(s.join(sub)).map_err(io)?;
            std::fs::set_permissions(s.join(sub), std::fs::Permissions::from_mode(mode)).map_err(io)?;
        }
        // munged wants every directory above its socket open to all.
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        let mut key = vec![0u8; 1024];
        use std::io::Read;
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key)).map_err(io)?;
        let key_file = s.join("munge/munge.key");
        std::fs::write(&key_file, &key).map_err(io)?;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let socket = s.join("run/munge.sock");
        let arg = |flag: &str, p: PathBuf| format!("--{flag}={}", p.display());
        self.spawn(
            "munged",
            &[
                "-F".into(),
                arg("key-file", key_file),
                arg("socket", socket.clone()),
                arg("log-file", s.join("log/munged.log")),
                arg("pid-file", s.join("run/munged.pid")),
                arg("seed-file", s.join("munge/seed")),
            ],
        )?;
        self.wait_until("munged's socket", Duration::from_secs(15), |_| socket.exists())?;

        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().and_then(|h| h.trim().split('.').next().map(str::to_string));
        let host = host.filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".into());
        self.node = host.clone();
        let (ctld_port, slurmd_port) = (free_port()?, free_port()?);
        let p = |sub: &str| s.join(sub).display().to_string();
        let conf = format!(
            "# Written by tests/slurm.rs: a single-node test cluster.\n\
             ClusterName=cstest\n\
             SlurmctldHost={host}(127.0.0.1)\n\
             SlurmctldPort={ctld_port}\n\
             SlurmdPort={slurmd_port}\n\
             SlurmUser=root\n\
             SlurmdUser=root\n\
             AuthType=auth/munge\n\
             CredType=cred/munge\n\
             AuthInfo=socket={socket},cred_expire=5\n\
             StateSaveLocation={state}\n\
             SlurmdSpoolDir={spool}\n\
             SlurmctldPidFile={ctld_pid}\n\
             SlurmdPidFile={slurmd_pid}\n\
             SlurmctldLogFile={ctld_log}\n\
             SlurmdLogFile={slurmd_log}\n\
             SlurmctldDebug=info\n\
             SlurmdDebug=info\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core\n\
             SchedulerType=sched/backfill\n\
             SchedulerParameters=bf_interval=1,sched_interval=2\n\
             SlurmdParameters=config_overrides\n\
             MpiDefault=none\n\
             ReturnToService=2\n\
             JobCompType=jobcomp/none\n\
             AccountingStorageType=accounting_storage/none\n\
             JobAcctGatherType=jobacct_gather/none\n\
             MailProg=/bin/true\n\
             JobRequeue=1\n\
             KillWait=30\n\
             MinJobAge=300\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 State=UNKNOWN\n\
             PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
            socket = socket.display(),
            state = p("state"),
            spool = p("spool"),
            ctld_pid = p("run/slurmctld.pid"),
            slurmd_pid = p("run/slurmd.pid"),
            ctld_log = p("log/slurmctld.log"),
            slurmd_log = p("log/slurmd.log"),
        );
        std::fs::write(&self.conf, conf).map_err(io)?;
        let conf = self.conf.display().to_string();
        self.spawn("slurmctld", &["-D".into(), "-f".into(), conf.clone()])?;
        self.spawn("slurmd", &["-D".into(), "-f".into(), conf, "-N".into(), host.clone()])?;
        self.wait_until("the node to be idle", Duration::from_secs(60), |c| {
            let out = c.run(&["sinfo", "-h", "-N", "-n", &host, "-o", "%T"]);
            String::from_utf8_lossy(&out.stdout).trim() == "idle"
        })
    }

    /// Starts a daemon in the foreground, its output in log/NAME.out.
    fn spawn(&mut self, name: &'static str, args: &[String]) -> Result<(), String> {
        let out = std::fs::File::create(self.state.join(format!("log/{name}.out"))).map_err(|e| e.to_string())?;
        let child = Command::new(find_tool(name).unwrap())
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("{name}: {e}"))?;
        self.daemons.push((name, child));
        Ok(())
    }

    /// Polls `done` until true; an error if a daemon exits or `limit` passes.
    fn wait_until(&mut self, what: &str, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if done(self) {
                return Ok(());
            }
            for (name, child) in &mut self.daemons {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("{name} exited ({status}) while waiting for {what}"));
                }
            }
            if start.elapsed() > limit {
                return Err(format!("no {what} after {} s", limit.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls `done` until true; fails the test after `limit`.
    fn wait_for(&self, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < limit, "waited {} s for {what}; queue:\n{}", limit.as_secs(), self.queue());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A Slurm command on this cluster.
    fn run(&self, args: &[&str]) -> Output {
        self.try_run(args).unwrap_or_else(|e| panic!("{}: {e}", args[0]))
    }

    fn try_run(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new(find_tool(args[0]).unwrap_or_else(|| args[0].into()))
            .args(&args[1..])
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .output()
    }

    /// Submits `script` in `dir` with sbatch: a batch script (`#!…`, with its `#SBATCH` lines;
    /// `opts` override them) or else a shell command line. Returns the job id.
    fn sbatch(&self, opts: &[&str], dir: &Path, stdout: &Path, stderr: Option<&Path>, script: &str) -> String {
        let mut args = vec!["sbatch".to_string(), "--parsable".into(), format!("--chdir={}", dir.display()), format!("--output={}", stdout.display())];
        if let Some(e) = stderr {
            args.push(format!("--error={}", e.display()));
        }
        args.extend(opts.iter().map(|o| o.to_string()));
        if script.starts_with("#!") {
            let file = dir.join(format!("job{}.sh", self.jobs.borrow().len()));
            std::fs::write(&file, script).unwrap();
            args.push(file.display().to_string());
        } else {
            args.push(format!("--wrap={script}"));
        }
        let out = self.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "sbatch {opts:?}: {}", text(&out));
        let id = String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap().to_string();
        assert!(!id.is_empty() && id.chars().all(|c| c.is_ascii_digit()), "sbatch said: {}", text(&out));
        self.jobs.borrow_mut().push(id.clone());
        id
    }

    /// The pid of the running job's batch shell (the process running its `slurm_script`).
    fn batch_shell(&self, id: &str) -> u32 {
        let mark = format!("SLURM_JOB_ID={id}").into_bytes();
        let mut found = None;
        self.wait_for(&format!("job {id}'s batch shell"), Duration::from_secs(30), || {
            found = processes_of(&self.conf).into_iter().find(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                cmd.windows(12).any(|w| w == b"slurm_script") && env.split(|&b| b == 0).any(|v| v == mark.as_slice())
            });
            found.is_some()
        });
        found.unwrap()
    }

    /// The job's (or array's tasks', or with "" every job's) (id, state, reason).
    fn states(&self, id: &str) -> Vec<(String, String, String)> {
        let mut args = vec!["squeue", "-h", "-t", "all", "-o", "%i %T %r"];
        if !id.is_empty() {
            args.extend(["-j", id]);
        }
        let Ok(out) = self.try_run(&args) else { return Vec::new() };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.to_string(), w.next()?.to_string(), w.collect::<Vec<_>>().join(" ")))
            })
            .collect()
    }

    /// `Some(states)` once the job (every task of an array) has ended.
    fn finished(&self, id: &str) -> Option<String> {
        let states = self.states(id);
        let ended = !states.is_empty() && states.iter().all(|(_, s, _)| TERMINAL.contains(&s.as_str()));
        ended.then(|| states.iter().map(|(j, s, _)| format!("{j}:{s}")).collect::<Vec<_>>().join(" "))
    }

    /// Waits for the job to end, releasing it if Slurm holds it; its tasks' `ID:STATE`.
    /// Prints the states it went through (with the seconds since the call).
    fn wait_done(&self, id: &str, limit: Duration) -> String {
        let (start, mut seen, mut last) = (Instant::now(), String::new(), String::new());
        self.wait_for(&format!("job {id} to end"), limit, || {
            let states = self.states(id);
            let now = states.iter().map(|(j, s, r)| format!("{j}:{s}({r})")).collect::<Vec<_>>().join(" ");
            if now != last {
                seen += &format!("\n  {:5.1} s {now}", start.elapsed().as_secs_f64());
                last = now;
            }
            if states.iter().any(|(_, s, r)| s == "REQUEUE_HOLD" || r.contains("JobHeld")) {
                self.run(&["scontrol", "release", id]);
            }
            !states.is_empty() && states.iter().all(|(_, s, _)| TERMINAL.contains(&s.as_str()))
        });
        eprintln!("slurm: job {id}:{seen}");
        self.finished(id).unwrap()
    }

    fn queue(&self) -> String {
        self.try_run(&["squeue", "-t", "all", "-o", "%i %j %T %r %M"]).map_or_else(|e| format!("squeue: {e}\n"), |o| text(&o))
    }

    /// The queue and the end of each log (for a failure).
    fn diagnostics(&self) -> String {
        let mut s = String::new();
        if !self.node.is_empty() {
            s += &format!("--- squeue\n{}", self.queue());
        }
        for log in ["munged.out", "munged.log", "slurmctld.out", "slurmctld.log", "slurmd.out", "slurmd.log"] {
            let text = std::fs::read_to_string(self.state.join("log").join(log)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                s += &format!("--- {log} (last 40 lines)\n{}\n", lines[lines.len().saturating_sub(40)..].join("\n"));
            }
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            eprintln!("{}", self.diagnostics());
        }
        let jobs = self.jobs.borrow().clone();
        if !jobs.is_empty() && self.daemons.iter_mut().all(|(_, c)| matches!(c.try_wait(), Ok(None))) {
            let mut cancel = vec!["scancel"];
            cancel.extend(jobs.iter().map(String::as_str));
            let _ = self.try_run(&cancel);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10)
                && self.states("").iter().any(|(_, s, _)| ["RUNNING", "COMPLETING", "CONFIGURING"].contains(&s.as_str()))
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // slurmd, slurmctld, munged: SIGTERM, then SIGKILL after 10 s.
        while let Some((_, mut child)) = self.daemons.pop() {
            if !matches!(child.try_wait(), Ok(None)) {
                continue;
            }
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let start = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Anything left of the jobs (slurmstepd, a job's processes): they carry SLURM_CONF.
        for pid in processes_of(&self.conf) {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).stderr(Stdio::null()).status();
        }
        if let Some(tmp) = self.tmp.take() {
            if failed {
                eprintln!("slurm: the cluster's directory is kept: {}", tmp.keep().display());
            }
        }
    }
}

/// Processes other than this one whose environment has `SLURM_CONF=conf`.
fn processes_of(conf: &Path) -> Vec<u32> {
    let mark = format!("SLURM_CONF={}", conf.display()).into_bytes();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == mark.as_slice())))
        .collect()
}

/// A tool in PATH or the sbin directories (which root's PATH may lack).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| e.to_string())
}

/// Single-quoted for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| format!("({}: {e})", p.display()))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Files under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}
