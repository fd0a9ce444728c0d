//! Inline images: choosing the terminal's graphics protocol, and one encoded image per on-screen
//! pane, rebuilt only when the picture shown in that pane changes.

use image::DynamicImage;
use ratatui::{layout::Rect, Frame};
use ratatui_image::{
    picker::{Picker, ProtocolType},
    protocol::StatefulProtocol,
    FilterType, Resize, StatefulImage,
};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The inline image protocols `--graphics` can force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Graphics {
    Kitty,
    Sixel,
    Iterm2,
    Halfblocks,
}

impl Graphics {
    pub fn protocol(self) -> ProtocolType {
        match self {
            Self::Kitty => ProtocolType::Kitty,
            Self::Sixel => ProtocolType::Sixel,
            Self::Iterm2 => ProtocolType::Iterm2,
            Self::Halfblocks => ProtocolType::Halfblocks,
        }
    }
}

/// Asks the terminal which graphics protocol and font size it has, falling back to half blocks,
/// which every terminal can show.
///
/// Inside tmux the question is passed through to the outer terminal, and when nothing answers
/// (passthrough refused, detached session) ratatui-image's reader thread stays blocked on stdin
/// after its timeout and swallows the user's keys. So under tmux the terminal is asked only when
/// `--graphics` forces a protocol, i.e. when the user knows the outer terminal has it.
pub fn make_picker(forced: Option<ProtocolType>) -> Picker {
    let fallback = Picker::halfblocks();
    let may_query = match forced {
        Some(ProtocolType::Halfblocks) => false,
        Some(_) => true,
        None => !fallback.tmux_detected(),
    } && std::io::stdout().is_terminal();
    let mut picker = if may_query { Picker::from_query_stdio().unwrap_or(fallback) } else { fallback };
    if let Some(protocol) = forced {
        picker.set_protocol_type(protocol);
    }
    picker
}

/// A picture the UI shows. Its id is new for every picture, so panes know when to re-encode.
#[derive(Clone)]
pub struct ShownImage {
    id: u64,
    pub image: Arc<DynamicImage>,
}

impl ShownImage {
    pub fn new(image: DynamicImage) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), image: Arc::new(image) }
    }

    pub fn width(&self) -> u32 {
        self.image.width()
    }

    pub fn height(&self) -> u32 {
        self.image.height()
    }
}

/// The places on screen that show images; each keeps its own encoded protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pane {
    DatasetImage,
    TrainingPreview,
    TranslateInput,
    TranslateOutput,
}

/// The encoded images of every pane. Encoding happens at render time (the protocol needs the
/// area), and again only when a pane's picture or size changes.
pub struct ImagePanes {
    picker: Picker,
    encoded: HashMap<Pane, (u64, StatefulProtocol)>,
}

impl ImagePanes {
    pub fn new(picker: Picker) -> Self {
        Self { picker, encoded: HashMap::new() }
    }

    /// Draws `shown` into `area`, scaled to fit with its aspect ratio kept.
    pub fn render(&mut self, frame: &mut Frame, area: Rect, pane: Pane, shown: &ShownImage) {
        let stale = self.encoded.get(&pane).is_none_or(|(id, _)| *id != shown.id);
        if stale {
            let protocol = self.picker.new_resize_protocol(shown.image.as_ref().clone());
            self.encoded.insert(pane, (shown.id, protocol));
        }
        if let Some((_, protocol)) = self.encoded.get_mut(&pane) {
            // Scale (not Fit) so that small images such as 32-pixel training previews are
            // enlarged to the pane instead of showing as a few cells.
            let widget = StatefulImage::default().resize(Resize::Scale(Some(FilterType::Triangle)));
            frame.render_stateful_widget(widget, area, protocol);
        }
    }
}
