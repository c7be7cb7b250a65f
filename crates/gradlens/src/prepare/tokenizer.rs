//! The checkpoint's own tokenizer (tokenizer.json through the `tokenizers` crate).

use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: cannot load tokenizer: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{path}: cannot encode text: {message}")]
    Encode { path: PathBuf, message: String },
    #[error(
        "max_length {max_length} leaves no room next to the tokenizer's {added} special token(s)"
    )]
    MaxLength { max_length: usize, added: usize },
}

/// A tokenizer as transformers' `tokenizer.encode(text, truncation=True, max_length=N)` uses it.
pub struct TextTokenizer {
    path: PathBuf,
    plain: Tokenizer,
    /// The same tokenizer with truncation to `max_length` enabled.
    truncating: Tokenizer,
    max_length: usize,
}

impl TextTokenizer {
    /// Load `dir/tokenizer.json`; [`TextTokenizer::encode_truncated`] cuts to `max_length`.
    pub fn from_dir(dir: &Path, max_length: usize) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let mut plain = Tokenizer::from_file(&path).map_err(|e| TokenizerError::Load {
            path: path.clone(),
            message: e.to_string(),
        })?;
        // A truncation or padding setting stored in tokenizer.json must not leak into our encodings.
        plain.with_padding(None);
        plain
            .with_truncation(None)
            .map_err(|e| TokenizerError::Load {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let added = plain
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        if max_length <= added {
            return Err(TokenizerError::MaxLength { max_length, added });
        }
        let mut truncating = plain.clone();
        truncating
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| TokenizerError::Load {
                path: path.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            path,
            plain,
            truncating,
            max_length,
        })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    fn wrap(&self, e: impl ToString) -> TokenizerError {
        TokenizerError::Encode {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Token ids of `text`, special tokens added when `special` is true, not truncated.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .plain
            .encode_fast(text, special)
            .map_err(|e| self.wrap(e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` truncated to `max_length` the way transformers truncates
    /// (`encode(text, truncation=True, max_length=N)`): the content is cut so that content and
    /// special tokens together fit.
    pub fn encode_truncated(&self, text: &str, special: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .truncating
            .encode_fast(text, special)
            .map_err(|e| self.wrap(e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.plain
    }
}
