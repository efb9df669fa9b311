import { useId, useState, type FormEvent } from 'react';

import { ApiError, login, register } from '../../lib/api/client.ts';
import { LIMITS, USERNAME_PATTERN, type User } from '../../lib/api/types.ts';

interface AuthScreenProps {
  onAuthenticated: (user: User) => void;
  /** Why the person is here again (an ended session), if that is the case. */
  notice?: string | null;
}

type Intent = 'login' | 'register';

/** Validates on this side what the server would refuse, in the same words a person reads. */
function validate(intent: Intent, username: string, password: string): string | null {
  if (username === '' || password === '') return 'Enter a username and a password.';
  if (intent === 'login') return null;
  if (!USERNAME_PATTERN.test(username)) {
    return `A username is ${LIMITS.usernameCharsMin} to ${LIMITS.usernameCharsMax} characters of letters, digits, ".", "_" and "-".`;
  }
  const chars = [...password].length;
  if (chars < LIMITS.passwordCharsMin || chars > LIMITS.passwordCharsMax) {
    return `A password is ${LIMITS.passwordCharsMin} to ${LIMITS.passwordCharsMax} characters.`;
  }
  return null;
}

export function AuthScreen({ onAuthenticated, notice = null }: AuthScreenProps) {
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState<Intent | null>(null);
  const hintId = useId();
  const errorId = useId();

  async function submit(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    if (busy) return;
    const submitter = (event.nativeEvent as SubmitEvent).submitter as HTMLButtonElement | null;
    const intent: Intent = submitter?.value === 'register' ? 'register' : 'login';
    const name = username.trim();
    const problem = validate(intent, name, password);
    if (problem) {
      setError(problem);
      return;
    }
    setBusy(intent);
    setError(null);
    try {
      const user = await (intent === 'register' ? register : login)({ username: name, password });
      onAuthenticated(user);
    } catch (cause) {
      setError(cause instanceof ApiError ? cause.message : 'Something went wrong. Try again.');
      setBusy(null);
    }
  }

  return (
    <main className="auth">
      <form className="auth-card" onSubmit={submit} noValidate aria-describedby={error ? errorId : undefined}>
        <div className="auth-brand">
          <img src="/favicon.svg" alt="" width="40" height="40" />
          <h1>Parlor</h1>
        </div>
        <p className="auth-lead">Log in, or pick a username and password to create an account.</p>
        {notice ? <p className="auth-notice">{notice}</p> : null}

        <label className="field">
          <span className="field-label">Username</span>
          <input
            name="username"
            autoComplete="username"
            autoCapitalize="none"
            spellCheck={false}
            maxLength={LIMITS.usernameCharsMax}
            value={username}
            onChange={(e) => setUsername(e.target.value)}
            aria-describedby={hintId}
            aria-invalid={error !== null && username.trim() === '' ? true : undefined}
            autoFocus
          />
        </label>
        <p id={hintId} className="field-hint">
          3–32 letters, digits, “.”, “_” or “-”.
        </p>
        <label className="field">
          <span className="field-label">Password</span>
          <input
            name="password"
            type="password"
            autoComplete="current-password"
            maxLength={LIMITS.passwordCharsMax}
            value={password}
            onChange={(e) => setPassword(e.target.value)}
          />
        </label>

        <p id={errorId} className="form-error" role="alert">
          {error}
        </p>

        <div className="auth-actions">
          <button
            type="submit"
            name="intent"
            value="login"
            className="button primary"
            aria-busy={busy === 'login'}
            aria-disabled={busy !== null}
          >
            Log in
          </button>
          <button
            type="submit"
            name="intent"
            value="register"
            className="button"
            aria-busy={busy === 'register'}
            aria-disabled={busy !== null}
          >
            Create account
          </button>
        </div>
      </form>
    </main>
  );
}
