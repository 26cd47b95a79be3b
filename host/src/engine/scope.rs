//! What later steps see of a finished step, as bindings in the run's scope:
//! `steps.<id>.output`, `.status`, `.error`, and for a parallel block also
//! `.branches.<name>.{status, output, error}`. A view holds the step's output document
//! itself (shared): nothing is converted unless an expression reads it.

use super::Ended;
use crate::workflow::{Binding, View};

/// A finished step's view.
pub(super) fn view(ended: &Ended) -> Binding {
    Binding::view(plain(ended))
}

/// A finished block's view: its own, plus each branch's status, output and error.
pub(super) fn block_view(ended: &Ended, branches: Vec<(String, View)>) -> Binding {
    Binding::view(View { branches: Some(branches), ..plain(ended) })
}

/// A switch's view: as any step's, plus which case ran.
pub(super) fn case_view(ended: &Ended, label: &str) -> Binding {
    Binding::view(View { case: Some(label.to_owned()), ..plain(ended) })
}

/// The `{status, output, error}` of how something ended.
pub(super) fn plain(ended: &Ended) -> View {
    View {
        status: ended.status.as_str(),
        output: ended.output.clone(),
        error: ended.error.clone(),
        branches: None,
        case: None,
    }
}

/// Binds `name` (`item`, `index`, `iteration`) in `scope`, replacing an outer binding.
pub(super) fn bind(scope: &mut crate::workflow::Scope, name: &str, value: Binding) {
    scope.extra.retain(|(bound, _)| bound != name);
    scope.extra.push((name.to_owned(), value));
}
