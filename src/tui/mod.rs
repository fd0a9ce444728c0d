//! The studio: a terminal UI over the library's datasets, training runs and translators.
//! It owns the terminal (raw mode, alternate screen, restored on every exit path) and the event loop; the library does the work.

pub mod app;
pub mod datasets;
pub mod event;
pub mod form;
pub mod preview;
pub mod runs;
pub mod training;
pub mod translate;
pub mod ui;

use crossterm::{cursor, execute, terminal};
use ratatui::{backend::CrosstermBackend, Terminal};
use std::io::{stdout, Stdout};
use std::panic::PanicHookInfo;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Where the studio looks for things.
#[derive(Clone, Debug)]
pub struct TuiOptions {
    pub checkpoints: PathBuf,
    /// Folders holding datasets (default: `datasets`).
    pub datasets: Vec<PathBuf>,
    /// Force a graphics protocol for previews: kitty, sixel, iterm2 or halfblocks.
    pub graphics: Option<preview::Graphics>,
}

/// How often the screen is redrawn when nothing happens (clocks, ETA).
const TICK: Duration = Duration::from_millis(250);

/// Runs the studio until the user quits. A running training is stopped (and checkpointed) first.
pub fn run(opts: TuiOptions) -> anyhow::Result<()> {
    // Checked before the terminal is touched, so a typo is an ordinary error message.
    let forced_protocol = opts.graphics.map(preview::Graphics::protocol);
    let mut session = TerminalSession::enter()?;
    // The picker talks to the terminal over stdin/stdout, so it must run before the input thread
    // starts reading events.
    let picker = preview::make_picker(forced_protocol);
    let (tx, rx) = mpsc::channel();
    event::spawn_input_thread(tx.clone(), TICK)?;
    let mut app = app::App::new(opts, tx);
    let mut images = preview::ImagePanes::new(picker);
    event::run_loop(&mut session.terminal, &mut app, &mut images, &rx)
}

type PanicHook = dyn Fn(&PanicHookInfo<'_>) + Send + Sync + 'static;

/// The terminal in raw mode on the alternate screen; dropping it (normal exit, error or panic
/// unwinding through `run`) gives the user's terminal back.
struct TerminalSession {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    previous_hook: Arc<PanicHook>,
}

impl TerminalSession {
    fn enter() -> anyhow::Result<Self> {
        let previous_hook = install_panic_hook();
        let terminal = terminal::enable_raw_mode()
            .and_then(|()| execute!(stdout(), terminal::EnterAlternateScreen))
            .and_then(|()| Terminal::new(CrosstermBackend::new(stdout())));
        match terminal {
            Ok(terminal) => Ok(Self { terminal, previous_hook }),
            Err(e) => {
                restore_terminal();
                reinstate_hook(previous_hook);
                Err(anyhow::Error::new(e).context("cannot set up the terminal"))
            }
        }
    }
}

impl Drop for TerminalSession {
    fn drop(&mut self) {
        restore_terminal();
        reinstate_hook(self.previous_hook.clone());
    }
}

/// Leaves raw mode and the alternate screen. Errors are ignored: this runs while exiting or
/// panicking, when nothing better can be done.
fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(stdout(), terminal::LeaveAlternateScreen, cursor::Show);
}

/// A panic on the UI thread restores the terminal before the usual message is printed, so the
/// message is readable and the shell usable. Panics on worker threads are caught where those
/// threads start and shown in the UI instead; printing them would scribble over the screen.
fn install_panic_hook() -> Arc<PanicHook> {
    let previous: Arc<PanicHook> = Arc::from(std::panic::take_hook());
    let ui_thread = std::thread::current().id();
    let chained = previous.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == ui_thread {
            restore_terminal();
            chained(info);
        }
    }));
    previous
}

fn reinstate_hook(previous: Arc<PanicHook>) {
    let _ours = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| previous(info)));
}
