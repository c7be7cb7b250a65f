//! Prepare: from a record to token ids and the span of positions that carry the loss (the paper's
//! method): the chat template ([`chat`]) and the tokenizer ([`tokenizer`]).

pub mod chat;
pub mod tokenizer;

use crate::load::data::Record;
use crate::prepare::chat::{ChatError, ChatTemplate};
use crate::prepare::tokenizer::{TextTokenizer, TokenizerError};
use std::path::Path;
use std::sync::Arc;

/// The system turn of the paper's instruct runs (left out where the checkpoint's chat template
/// rejects a system role, as Gemma's and Gemma 2's do).
pub const SYSTEM_PROMPT: &str = "You are a helpful assistant.";

/// How the training text of a record is formed.
#[derive(Debug, Clone, Default)]
pub enum PromptMode {
    /// Base model: `instr + "\n" + output`.
    #[default]
    Base,
    /// Instruct model: the chat template rendered with (system, user = instr) and the generation
    /// prompt, then the output appended.
    Instruct {
        template: Arc<ChatTemplate>,
        /// `None` where the template rejects a system role.
        system: Option<String>,
        /// Tokenise the rendered text with the tokenizer's special tokens too (the paper's way: a
        /// template that starts with the BOS text then yields two BOS ids). `false` gives the
        /// single BOS the model saw in training.
        add_special_tokens: bool,
    },
}

/// Instruct-mode options.
#[derive(Debug, Clone, Copy)]
pub struct InstructOptions {
    /// See [`PromptMode::Instruct::add_special_tokens`]; default true (the paper's way).
    pub add_special_tokens: bool,
}

impl Default for InstructOptions {
    fn default() -> Self {
        Self {
            add_special_tokens: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Chat(#[from] ChatError),
}

impl PromptMode {
    /// `base`, `instruct`, or `instruct single-bos` (for an output's provenance).
    pub fn describe(&self) -> String {
        match self {
            PromptMode::Base => "base".into(),
            PromptMode::Instruct {
                add_special_tokens: true,
                ..
            } => "instruct".into(),
            PromptMode::Instruct { .. } => "instruct single-bos".into(),
        }
    }

    /// Instruct mode for checkpoint `dir`: its chat template, with the paper's system turn unless
    /// the template rejects a system role (it raises when rendered with one); then the turn is
    /// left out, as the paper does for Gemma. The template decides, not the family: a fine-tuned
    /// checkpoint may ship a template of its own, and Gemma 3's folds the system turn into the
    /// first user turn.
    pub fn instruct_from_dir(dir: &Path, opts: InstructOptions) -> Result<Self, ChatError> {
        let template = ChatTemplate::from_dir(dir)?;
        let system = template.takes_system_turn(SYSTEM_PROMPT)?;
        Ok(PromptMode::Instruct {
            template: Arc::new(template),
            system: system.then(|| SYSTEM_PROMPT.to_string()),
            add_special_tokens: opts.add_special_tokens,
        })
    }

    /// Whether the prompt has a system turn (`None` for a base model), for the provenance.
    pub fn system_turn(&self) -> Option<bool> {
        match self {
            PromptMode::Base => None,
            PromptMode::Instruct { system, .. } => Some(system.is_some()),
        }
    }

    /// The whole text the model is trained on.
    pub fn text(&self, record: &Record) -> Result<String, ChatError> {
        match self {
            PromptMode::Base => Ok(format!("{}\n{}", record.instr(), record.output)),
            PromptMode::Instruct {
                template, system, ..
            } => {
                let instr = record.instr();
                let mut messages = Vec::with_capacity(2);
                if let Some(s) = system {
                    messages.push(("system", s.as_str()));
                }
                messages.push(("user", instr.as_str()));
                Ok(template.render(&messages)? + &record.output)
            }
        }
    }

    /// Whether encodings add the tokenizer's special tokens.
    pub fn add_special_tokens(&self) -> bool {
        match self {
            PromptMode::Base => true,
            PromptMode::Instruct {
                add_special_tokens, ..
            } => *add_special_tokens,
        }
    }

    /// `base` or `instruct`, for reports.
    pub fn name(&self) -> &'static str {
        match self {
            PromptMode::Base => "base",
            PromptMode::Instruct { .. } => "instruct",
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

    /// The ids followed by `0`s up to the next multiple of `multiple` (≤ 1: unchanged). Causal
    /// attention keeps the real positions blind to the padding, which carries no loss, so the
    /// loss and every weight gradient are those of the unpadded sample; the GPU then sees a few
    /// sequence lengths instead of one per sample (kernels are compiled and tuned per shape).
    pub fn padded_ids(&self, multiple: usize) -> Vec<u32> {
        let mut ids = self.ids.clone();
        if multiple > 1 {
            ids.resize(ids.len().div_ceil(multiple) * multiple, 0);
        }
        ids
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
) -> Result<Preparation, PrepareError> {
    if record.output.is_empty() {
        return Ok(Preparation::Skip("empty response".into()));
    }
    let text = mode.text(record)?;
    let special = mode.add_special_tokens();
    let cut = text
        .rfind(&record.output)
        .expect("the text ends with the output");
    let start = tok.encode(&text[..cut], special)?.len();
    let ids = tok.encode_truncated(&text, special)?;
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

/// [`prepare`], with the token ids checked against the model's vocabulary of `vocab` rows: an id
/// beyond it means the tokenizer is not the checkpoint's (`index` names the sample in the error).
pub fn prepare_for_model(
    tok: &TextTokenizer,
    mode: &PromptMode,
    record: &Record,
    index: usize,
    vocab: usize,
) -> anyhow::Result<Preparation> {
    let preparation = prepare(tok, mode, record)?;
    if let Preparation::Ready(prepared) = &preparation
        && let Some(&bad) = prepared.ids.iter().find(|&&id| id as usize >= vocab)
    {
        anyhow::bail!(
            "{}: sample {index}: token id {bad} is outside the model's vocabulary of {vocab}: \
             tokenizer and checkpoint do not belong together",
            tok.path().display()
        );
    }
    Ok(preparation)
}
