import { useCallback, useEffect, useState } from 'react';

import { AuthScreen } from '../features/auth/AuthScreen.tsx';
import { clearDrafts } from '../features/conversation/drafts.ts';
import * as api from '../lib/api/client.ts';
import type { User } from '../lib/api/types.ts';
import { ChatApp } from './ChatApp.tsx';

type AuthState =
  | { kind: 'checking' }
  | { kind: 'unreachable' }
  | { kind: 'anonymous'; notice: string | null }
  | { kind: 'user'; user: User };

/** Knows whether someone is logged in (the HttpOnly cookie is invisible to JS: ask /me). */
export function App() {
  const [auth, setAuth] = useState<AuthState>({ kind: 'checking' });

  const check = useCallback(() => {
    api.me().then(
      (user) => setAuth(user ? { kind: 'user', user } : { kind: 'anonymous', notice: null }),
      () => setAuth({ kind: 'unreachable' }),
    );
  }, []);

  useEffect(check, [check]);

  const retry = () => {
    setAuth({ kind: 'checking' });
    check();
  };

  const onEnded = useCallback(() => {
    setAuth({ kind: 'anonymous', notice: 'Your session has ended. Please log in again.' });
  }, []);

  const onLogout = useCallback(async () => {
    try {
      await api.logout();
    } catch {
      // The cookie may already be gone; either way this browser is logged out.
    }
    clearDrafts();
    window.location.hash = '';
    setAuth({ kind: 'anonymous', notice: null });
  }, []);

  switch (auth.kind) {
    case 'checking':
      return (
        <main className="splash" aria-busy="true">
          <p>Loading Parlor…</p>
        </main>
      );
    case 'unreachable':
      return (
        <main className="splash">
          <p role="alert">Cannot reach the Parlor server.</p>
          <button type="button" className="button primary" onClick={retry}>
            Try again
          </button>
        </main>
      );
    case 'anonymous':
      return <AuthScreen notice={auth.notice} onAuthenticated={(user) => setAuth({ kind: 'user', user })} />;
    case 'user':
      return <ChatApp key={auth.user.id} user={auth.user} onEnded={onEnded} onLogout={onLogout} />;
  }
}
