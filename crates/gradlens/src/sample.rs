//! From a record to token ids and the span of positions that carry the loss (the paper's method).

use crate::data::Record;
use crate::tokenizer::{TextTokenizer, TokenizerError};

/// How the training text of a record is formed.
#[derive(Debug, Clone, Default)]
pub enum PromptMode {
    /// Base model: `instr + "\n" + output`.
    #[default]
    Base,
}

impl PromptMode {
    /// The whole text the model is trained on.
    pub fn text(&self, record: &Record) -> String {
        match self {
            PromptMode::Base => format!("{}\n{}", record.instr(), record.output),
        }
    }
}

/// A sample ready for one forward and backward pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Token ids, truncated to max_length.
    pub ids: Vec<u32>,
    /// `len(encode(text[..rfind(output)]))`: the first response token's index.
    pub start: usize,
}

impl Prepared {
    /// First position t whose next-token prediction carries loss (t + 1 ≥ start).
    pub fn first_loss_position(&self) -> usize {
        self.start.max(1) - 1
    }

    /// Number of positions that carry loss (t + 1 ≥ start and t + 1 < len).
    pub fn n_loss_tokens(&self) -> usize {
        self.ids.len().saturating_sub(self.start.max(1))
    }
}

/// A record is either measured or skipped with a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preparation {
    Ready(Prepared),
    Skip(String),
}

/// Tokenise a record as the paper does: the whole text with special tokens, truncated to
/// max_length; the response starts after `len(encode(text[..text.rfind(output)]))` tokens.
pub fn prepare(
    tok: &TextTokenizer,
    mode: &PromptMode,
    record: &Record,
) -> Result<Preparation, TokenizerError> {
    if record.output.is_empty() {
        return Ok(Preparation::Skip("empty response".into()));
    }
    let text = mode.text(record);
    let cut = text
        .rfind(&record.output)
        .expect("the text ends with the output");
    let start = tok.encode(&text[..cut], true)?.len();
    let ids = tok.encode_truncated(&text, true)?;
    let prepared = Prepared { ids, start };
    if prepared.n_loss_tokens() == 0 {
        return Ok(Preparation::Skip(format!(
            "no response token within max_length {} (the prompt takes {} tokens)",
            tok.max_length(),
            start
        )));
    }
    Ok(Preparation::Ready(prepared))
}
