//! The studio: a terminal UI over the library's datasets, training runs and translators.
//! It owns the terminal (raw mode, alternate screen, restored on every exit path) and the event loop; the library does the work.
//!
//! Layers, each using only those below it: leaves (`form`, `preview`, `runs`, `dataset_scan`,
//! `models`, `options`, `keys`), then `event` (the channel) and `action` (what screens ask of the
//! App), then the screens (`datasets`, `training`, `translate`, `sweeps`: state, keys, handlers)
//! and their renderers (`ui::{datasets,training,translate,sweeps}` over `ui::widgets`), then `app` (the thin
//! [`App`] applying actions), `ui` (drawing the App) and this module (terminal and loop).

pub mod action;
pub mod app;
pub mod dataset_scan;
pub mod datasets;
pub mod event;
pub mod form;
pub mod keys;
pub mod models;
pub mod options;
pub mod preview;
pub mod runs;
pub mod sweeps;
pub mod training;
pub mod translate;
pub mod ui;

pub use options::TuiOptions;

use anyhow::Context;
use app::App;
use crossterm::{cursor, execute, terminal};
use event::AppEvent;
use preview::ImagePanes;
use ratatui::{backend::{Backend, CrosstermBackend}, Terminal};
use std::io::{stdout, Stdout};
use std::panic::PanicHookInfo;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::Duration;

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
    // SIGTERM and SIGHUP (raw mode delivers Ctrl-C as a key) stop a running training, saved, and
    // quit, as Ctrl-C does.
    let signals = tx.clone();
    ctrlc::set_handler(move || {
        let _ = signals.send(AppEvent::Interrupted);
    })
    .context("cannot install the SIGTERM/SIGHUP handler")?;
    let mut app = App::new(opts, tx);
    let mut images = ImagePanes::new(picker);
    run_loop(&mut session.terminal, &mut app, &mut images, &rx)
}

/// Events drained per redraw at most, so a fast training run cannot starve the screen.
const MAX_EVENTS_PER_FRAME: usize = 512;

/// Draws, waits for events, applies them, until the app wants to quit.
fn run_loop<B: Backend>(terminal: &mut Terminal<B>, app: &mut App, images: &mut ImagePanes, rx: &Receiver<AppEvent>) -> anyhow::Result<()>
where
    B::Error: Send + Sync + 'static,
{
    // A terminal that fails (closed under us: SIGHUP, a dropped SSH session) is treated as lost
    // input: the studio stops its training, waits for the checkpoint without drawing, and quits.
    let mut drawing = true;
    loop {
        if drawing {
            if let Err(e) = terminal.draw(|frame| ui::draw(frame, app, images)) {
                drawing = false;
                app.handle(AppEvent::InputFailed(format!("cannot draw on it: {e}")));
            }
        }
        let first = rx.recv().context("the studio's event channel closed")?;
        for event in std::iter::once(first).chain(rx.try_iter().take(MAX_EVENTS_PER_FRAME)) {
            app.handle(event);
        }
        if app.should_quit() {
            return match app.input_error() {
                Some(why) => Err(anyhow::anyhow!("cannot read the terminal: {why}")),
                None => Ok(()),
            };
        }
    }
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
