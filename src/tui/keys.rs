//! Key bindings, declared once: each screen (and the App, for the keys that work everywhere) lists
//! its [`KeyBinding`]s; its handler dispatches on the command a key maps to in the current mode,
//! and the help overlay and the footer are drawn from the same declarations. Also the list-cursor
//! keys every list shares.

use crossterm::event::KeyCode;

/// A footer hint: the key as shown, and what it does (`("n", "new dataset")`).
pub type Hint = (&'static str, &'static str);

/// One key (or group of keys) of a screen: what it does, where it is listed, and when it works.
pub struct KeyBinding<C: 'static, M: 'static> {
    /// The keys as the help writes them, e.g. `← → or h l`.
    pub keys: &'static str,
    /// The key codes that trigger the binding. Empty for keys that the screen's text field or
    /// the App handles itself and that are declared here only for the help and the footer.
    pub codes: &'static [KeyCode],
    /// The help overlay's description; empty: not listed in the help.
    pub help: &'static str,
    /// The footer's hint while the binding is active; None: not shown in the footer.
    pub hint: Option<Hint>,
    /// The modes of its screen in which the binding is active.
    pub modes: &'static [M],
    pub command: C,
}

/// The command `code` maps to in `mode`: the first active binding with that code.
pub fn command<C: Copy, M: PartialEq>(bindings: &[KeyBinding<C, M>], mode: M, code: KeyCode) -> Option<C> {
    bindings.iter().find(|b| b.modes.contains(&mode) && b.codes.contains(&code)).map(|b| b.command)
}

/// The footer hints of the bindings active in `mode`, in declaration order.
pub fn hints<C, M: PartialEq>(bindings: &[KeyBinding<C, M>], mode: M) -> impl Iterator<Item = Hint> + '_ {
    bindings.iter().filter(move |b| b.modes.contains(&mode)).filter_map(|b| b.hint)
}

/// The help lines (keys, description) of the bindings that have one, in declaration order.
pub fn help<C, M>(bindings: &[KeyBinding<C, M>]) -> Vec<Hint> {
    bindings.iter().filter(|b| !b.help.is_empty()).map(|b| (b.keys, b.help)).collect()
}

/// The keys that move a list cursor (see [`move_cursor`]).
pub const LIST_MOVES: &[KeyCode] =
    &[KeyCode::Up, KeyCode::Char('k'), KeyCode::Down, KeyCode::Char('j'), KeyCode::PageUp, KeyCode::PageDown, KeyCode::Home, KeyCode::End];

/// Moves a list cursor for ↑↓/jk, PageUp/PageDown and Home/End; says whether the key was one.
pub fn move_cursor(cursor: &mut usize, count: usize, code: KeyCode) -> bool {
    let last = count.saturating_sub(1);
    *cursor = match code {
        KeyCode::Up | KeyCode::Char('k') => cursor.saturating_sub(1),
        KeyCode::Down | KeyCode::Char('j') => (*cursor + 1).min(last),
        KeyCode::PageUp => cursor.saturating_sub(10),
        KeyCode::PageDown => (*cursor + 10).min(last),
        KeyCode::Home => 0,
        KeyCode::End => last,
        _ => return false,
    };
    true
}
