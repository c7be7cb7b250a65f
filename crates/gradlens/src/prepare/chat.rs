//! Instruct mode: the model's own chat template (the Jinja `chat_template` of
//! tokenizer_config.json) rendered with minijinja the way transformers' `apply_chat_template`
//! renders it (trim_blocks, lstrip_blocks, loop controls, `raise_exception`, Python string methods).

use minijinja::{Environment, Error, ErrorKind, context};
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(
        "{path}: the checkpoint has no chat template (tokenizer_config.json has no \"chat_template\" and there is no chat_template.jinja): instruct mode needs one"
    )]
    NoTemplate { path: PathBuf },
    #[error("{path}: chat template: {message}")]
    Render { path: PathBuf, message: String },
}

/// A compiled chat template with the special tokens it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    path: PathBuf,
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// `bos_token` etc. are strings or AddedToken objects (`{"content": …}`) in tokenizer_config.json.
fn token_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// Read the template of checkpoint `dir`: `chat_template` of tokenizer_config.json (a string,
    /// or a list of `{name, template}` of which "default" is used), else `chat_template.jinja`.
    pub fn from_dir(dir: &Path) -> Result<Self, ChatError> {
        let path = dir.join("tokenizer_config.json");
        let cfg: Value = if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|source| ChatError::Io {
                path: path.clone(),
                source,
            })?;
            serde_json::from_str(&text).map_err(|e| ChatError::Invalid {
                path: path.clone(),
                message: format!("not valid JSON: {e}"),
            })?
        } else {
            Value::Null
        };
        let source = match cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => {
                let named = |name: &str| {
                    list.iter()
                        .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
                };
                let chosen = named("default").ok_or_else(|| ChatError::Invalid {
                    path: path.clone(),
                    message: "chat_template is a list without a template named \"default\"".into(),
                })?;
                chosen
                    .get("template")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }
            Some(Value::Null) | None => None,
            Some(_) => {
                return Err(ChatError::Invalid {
                    path: path.clone(),
                    message: "chat_template must be a string or a list of {name, template}".into(),
                });
            }
        };
        let (source, path) = match source {
            Some(s) => (s, path),
            None => {
                let jinja = dir.join("chat_template.jinja");
                match std::fs::read_to_string(&jinja) {
                    Ok(s) => (s, jinja),
                    Err(_) => return Err(ChatError::NoTemplate { path }),
                }
            }
        };
        Ok(Self {
            bos_token: token_text(cfg.get("bos_token")),
            eos_token: token_text(cfg.get("eos_token")),
            env: environment(&path, source)?,
            path,
        })
    }
}

fn environment(path: &Path, source: String) -> Result<Environment<'static>, ChatError> {
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("valid syntax config"),
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| -> Result<String, Error> {
        // Templates use it for "today's date"; a fixed date keeps measurements reproducible.
        let _ = fmt;
        Ok("26 Jul 2024".to_string())
    });
    // A template that does not compile fails here, not at the first sample.
    env.add_template_owned("chat", source)
        .map_err(|e| ChatError::Render {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(env)
}

impl ChatTemplate {
    /// Render `messages` (role, content) with `add_generation_prompt=true`.
    pub fn render(&self, messages: &[(&str, &str)]) -> Result<String, ChatError> {
        let tmpl = self.env.get_template("chat").expect("added at load");
        let msgs: Vec<_> = messages
            .iter()
            .map(|(role, content)| context! { role => *role, content => *content })
            .collect();
        tmpl.render(context! {
            messages => msgs,
            add_generation_prompt => true,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })
        .map_err(|e| ChatError::Render {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the template takes a system turn: it renders (system, user) without raising. One
    /// that raises then but renders (user) alone rejects the system role (Gemma's "System role
    /// not supported"); one that raises on both is broken, and its error is returned.
    pub fn takes_system_turn(&self, system: &str) -> Result<bool, ChatError> {
        const PROBE: &str = "What is 2 + 3?";
        match self.render(&[("system", system), ("user", PROBE)]) {
            Ok(_) => Ok(true),
            Err(with) => {
                self.render(&[("user", PROBE)])?;
                tracing::debug!("{with}: the system turn is left out");
                Ok(false)
            }
        }
    }
}
