//! How the binaries print an error: its chain of causes on one line, each cause once.

use std::error::Error;

/// `outer: cause: deeper cause`, leaving out a cause whose text the message before it already
/// contains (error types that put their source in their own message, `"{path}: {source}"`,
/// would otherwise print it twice).
pub fn one_line(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut last = line.clone();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !last.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        last = text;
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(String, Option<Box<dyn Error + 'static>>);

    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref()
        }
    }

    #[test]
    fn each_cause_once() {
        let io = || Box::new(std::io::Error::from(std::io::ErrorKind::NotFound)) as Box<dyn Error>;
        let os = io().to_string();
        // "x.nii: <os>" whose source is <os>: printed once.
        let repeated = Wrap(format!("x.nii: {os}"), Some(io()));
        assert_eq!(one_line(&repeated), format!("x.nii: {os}"));
        // A context that does not repeat its cause: both.
        let context = Wrap("reading the case".into(), Some(Box::new(repeated)));
        assert_eq!(one_line(&context), format!("reading the case: x.nii: {os}"));
    }
}
