//! The studio end to end in a real terminal: the release binary runs in a detached tmux session
//! and is driven with `send-keys` as a user would, from creating a dataset to stopping a run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A private tmux server (own socket, no user config) running the studio in one session; killed
/// on drop.
struct Tmux {
    socket: PathBuf,
    root: PathBuf,
    tag: String,
}

const SESSION: &str = "studio";

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux").arg("-S").arg(&self.socket).args(["-f", "/dev/null"]).args(args).output().expect("tmux runs")
    }

    /// Starts `cyclestudio tui` over `root/datasets` and `root/checkpoints` in a 160×50 terminal.
    /// After the studio exits, the shell records its exit status and the terminal's modes (which
    /// show whether raw mode was switched off again) into `root/<tag>.exit` and `root/<tag>.stty`.
    fn launch_studio(root: &Path, tag: &str) -> Self {
        let command = format!(
            "{} tui --datasets {} --checkpoints {}; echo $? > {}; stty -a > {}",
            quoted(Path::new(env!("CARGO_BIN_EXE_cyclestudio"))),
            quoted(&root.join("datasets")),
            quoted(&root.join("checkpoints")),
            quoted(&root.join(format!("{tag}.exit"))),
            quoted(&root.join(format!("{tag}.stty"))),
        );
        let tmux = Self { socket: root.join(format!("{tag}.sock")), root: root.to_path_buf(), tag: tag.to_string() };
        let out = tmux.run(&["new-session", "-d", "-s", SESSION, "-x", "160", "-y", "50", &command]);
        assert!(out.status.success(), "tmux new-session failed: {}", String::from_utf8_lossy(&out.stderr));
        tmux
    }

    /// Waits for the session to end, then checks that the studio exited with status 0 and left
    /// the terminal out of raw mode.
    fn assert_exits_cleanly(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.is_running() {
            assert!(Instant::now() < deadline, "the studio did not quit:\n{}", self.screen());
            std::thread::sleep(Duration::from_millis(100));
        }
        let read = |ext: &str| std::fs::read_to_string(self.root.join(format!("{}.{ext}", self.tag))).unwrap_or_default();
        let exit_status = read("exit");
        assert_eq!(exit_status.trim(), "0", "the studio exited with status {exit_status:?}");
        let modes = read("stty");
        let flags: Vec<&str> = modes.split_whitespace().collect();
        assert!(flags.contains(&"icanon") && flags.contains(&"echo"), "the terminal was left in raw mode:\n{modes}");
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", SESSION];
        args.extend(keys);
        assert!(self.run(&args).status.success(), "send-keys {keys:?}");
    }

    /// Types text literally (no key names).
    fn type_text(&self, text: &str) {
        assert!(self.run(&["send-keys", "-t", SESSION, "-l", text]).status.success(), "typing {text:?}");
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", SESSION]).stdout).into_owned()
    }

    fn is_running(&self) -> bool {
        self.run(&["has-session", "-t", SESSION]).status.success()
    }

    /// Polls the screen until `ready` accepts it; returns that screen.
    fn wait_for(&self, what: &str, timeout: Duration, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(self.is_running(), "the studio exited while waiting for {what}");
            assert!(Instant::now() < deadline, "timed out waiting for {what}; the screen shows:\n{screen}");
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    fn wait_for_text(&self, text: &str) -> String {
        self.wait_for(text, Duration::from_secs(30), |s| s.contains(text))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The step shown on the training gauge ("step N/TOTAL").
fn shown_step(screen: &str) -> Option<u64> {
    screen.match_indices("step ").find_map(|(i, _)| {
        let (number, _) = screen[i + 5..].split_once('/')?;
        number.parse().ok()
    })
}

fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[test]
fn studio_creates_trains_stops_resumes_and_quits_in_a_real_terminal() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("SKIPPED studio_creates_trains_stops_resumes_and_quits_in_a_real_terminal: tmux is not installed (apt-get install tmux)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    common::write_pngs(&root.join("photos"), 8, 48, 48);
    let tmux = Tmux::launch_studio(root, "first");

    // Datasets: create a grey↔colour dataset from the photos, completing the folder with Tab.
    tmux.wait_for_text("No datasets in");
    tmux.keys(&["n"]);
    tmux.wait_for_text("New dataset in");
    tmux.type_text("tiny");
    tmux.keys(&["Down"]);
    tmux.type_text(&format!("{}/pho", root.display()));
    tmux.keys(&["Tab"]);
    tmux.wait_for_text(&format!("{}/photos/", root.display()));
    tmux.keys(&["Enter"]);
    tmux.wait_for_text("created");
    tmux.keys(&["Escape"]);
    tmux.wait_for("the form to close", Duration::from_secs(10), |s| !s.contains("New dataset in") && s.contains("gray (1ch)"));

    // Training: a tiny configuration, typed into the settings.
    tmux.keys(&["2"]);
    tmux.wait_for_text("quick CPU preview");
    // Past the run, dataset, preset, name and model (CycleGAN) to the generator.
    tmux.keys(&["Down", "Down", "Down", "Down", "Down"]);
    for value in ["resnet_2blocks", "4", "32", "200", "0"] {
        tmux.keys(&["Enter", "C-u"]);
        tmux.type_text(value);
        tmux.keys(&["Enter", "Down"]);
    }
    // Past the learning rate, paired mode, keep brightness and the GAN weight to "Preview every".
    tmux.keys(&["Down", "Down", "Down", "Down", "Enter", "C-u"]);
    tmux.type_text("2");
    tmux.keys(&["Enter"]);
    let rows = ["resnet_2blocks", "ngf (= ndf)        4", "Image size         32", "Iterations         200", "Preview every      2"];
    tmux.wait_for("the tiny settings", Duration::from_secs(10), |s| rows.iter().all(|row| s.contains(row)));
    tmux.keys(&["s"]);
    let first = tmux.wait_for("the first preview and loss curves", Duration::from_secs(120), |s| {
        s.contains("Preview · step") && s.contains("G_AB adv") && s.contains("D_B") && shown_step(s).is_some_and(|n| n >= 2)
    });
    let first_step = shown_step(&first).unwrap_or(0);
    tmux.wait_for("the step counter to advance", Duration::from_secs(60), |s| shown_step(s).is_some_and(|n| n > first_step));

    // Stop: the run saves a checkpoint and says so.
    tmux.keys(&["x"]);
    tmux.wait_for("the stop", Duration::from_secs(60), |s| s.contains("stopped, checkpoint saved"));
    let manifest = root.join("checkpoints/tiny_quick/latest/manifest.toml");
    let stopped_at = checkpoint_step(&manifest).expect("a checkpoint after stopping");

    // Quit: the studio exits cleanly and gives the terminal back.
    tmux.keys(&["q"]);
    tmux.assert_exits_cleanly();

    // Again: resume the run, and quit with Ctrl-C while it trains. The run is stopped and saved
    // before the studio exits.
    let tmux = tmux.resume_training(root, "second", stopped_at);
    tmux.keys(&["C-c"]);
    tmux.assert_exits_cleanly();
    let resumed_to = checkpoint_step(&manifest).expect("a checkpoint after Ctrl-C");
    assert!(resumed_to > stopped_at, "Ctrl-C saved step {resumed_to}, not later than {stopped_at}");

    // SIGTERM while it trains: as Ctrl-C, saved and a clean exit.
    let tmux = tmux.resume_training(root, "third", resumed_to);
    let studio = tmux.studio_pid();
    assert!(Command::new("kill").args(["-TERM", &studio.to_string()]).status().unwrap().success());
    tmux.assert_exits_cleanly();
    let after_term = checkpoint_step(&manifest).expect("a checkpoint after SIGTERM");
    assert!(after_term > resumed_to, "SIGTERM saved step {after_term}, not later than {resumed_to}");

    // The terminal closed under it (tmux kills the session: SIGHUP, then no terminal to draw on
    // or read): the run is still saved before the studio exits.
    let tmux = tmux.resume_training(root, "fourth", after_term);
    let studio = tmux.studio_pid();
    tmux.run(&["kill-session", "-t", SESSION]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&format!("/proc/{studio}")).exists() {
        assert!(Instant::now() < deadline, "the studio did not exit after its terminal closed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let after_hup = checkpoint_step(&manifest).expect("a checkpoint after SIGHUP");
    assert!(after_hup > after_term, "SIGHUP saved step {after_hup}, not later than {after_term}");
}

impl Tmux {
    /// A new studio in session `tag` that resumes tiny_quick (saved at `from`) and trains on.
    fn resume_training(&self, root: &Path, tag: &str, from: u64) -> Self {
        let tmux = Tmux::launch_studio(root, tag);
        tmux.wait_for_text("gray (1ch)");
        tmux.keys(&["2"]);
        tmux.wait_for_text("Settings");
        tmux.keys(&["Right"]);
        tmux.wait_for_text("resume tiny_quick");
        tmux.keys(&["s"]);
        tmux.wait_for("the resumed run", Duration::from_secs(120), |s| {
            s.contains(&format!("resumed from step {from}")) && shown_step(s).is_some_and(|n| n > from)
        });
        tmux
    }

    /// The studio's process id: the child of the pane's shell.
    fn studio_pid(&self) -> u32 {
        let pane = String::from_utf8_lossy(&self.run(&["list-panes", "-t", SESSION, "-F", "#{pane_pid}"]).stdout).trim().to_string();
        let children = Command::new("pgrep").args(["-P", &pane]).output().expect("pgrep runs");
        let text = String::from_utf8_lossy(&children.stdout);
        text.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no studio under pane {pane}: {text:?}"))
    }
}

/// The step recorded in a checkpoint manifest.
fn checkpoint_step(manifest: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(manifest).ok()?;
    toml::from_str::<cyclestudio::checkpoint::Manifest>(&text).ok().map(|m| m.step)
}
