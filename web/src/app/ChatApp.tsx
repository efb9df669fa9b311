import { useEffect, useMemo, useRef, useState, useSyncExternalStore } from 'react';

import { Avatar } from '../components/ui/Avatar.tsx';
import { Icon } from '../components/ui/Icon.tsx';
import { ChatFilter } from '../features/chats/ChatFilter.tsx';
import { ChatInfoDialog } from '../features/chats/ChatInfoDialog.tsx';
import { ChatList } from '../features/chats/ChatList.tsx';
import { NewChatDialog } from '../features/chats/NewChatDialog.tsx';
import { NewGroupDialog } from '../features/chats/NewGroupDialog.tsx';
import { QuickSwitcher } from '../features/chats/QuickSwitcher.tsx';
import { ConversationView } from '../features/conversation/ConversationView.tsx';
import { plainText } from '../features/conversation/markdown.ts';
import { PresenceDot } from '../features/presence/PresenceDot.tsx';
import { PresenceStatus } from '../features/presence/PresenceStatus.tsx';
import { SearchDialog } from '../features/search/SearchDialog.tsx';
import { useMessageSearch } from '../features/search/useMessageSearch.ts';
import type { Conversation, ConversationId, SearchHit, User, UserId } from '../lib/api/types.ts';
import { hitKey, queryOf, type SearchInput } from '../lib/search/messageSearch.ts';
import type { UploadQueues } from '../lib/files/uploads.ts';
import type { ChatView, EngineState, SyncEngine } from '../lib/sync/engine.ts';
import { notificationAccess, notifyIncoming, requestNotifications, type NotificationAccess } from './notifications.ts';
import { startSession, type Session } from './session.ts';
import { isTextField, shortcutLabel, shortcutOf } from './shortcuts.ts';
import { conversationHref, useHashRoute } from './useHashRoute.ts';

const MAC = typeof navigator !== 'undefined' && /Mac|iPhone|iPad/.test(navigator.platform);
const SWITCHER_KEYS = `${shortcutLabel('switcher', MAC)}`;
const SEARCH_KEYS = `${shortcutLabel('search', MAC)} or /`;

const NO_SEARCH: SearchInput = { text: '', conversationId: null, senderId: null, range: 'any', sort: 'relevance' };

/** A message to show in context, asked by a search result; `token` tells two asks apart. */
interface Jump {
  conversationId: ConversationId;
  seq: number;
  token: number;
}

interface ChatAppProps {
  user: User;
  onEnded: () => void;
  onLogout: () => void;
}

/** A logged-in person's Parlor: one session (engine + socket) for as long as this is mounted. */
export function ChatApp({ user, onEnded, onLogout }: ChatAppProps) {
  const [session, setSession] = useState<Session | null>(null);
  const [activeId, navigate] = useHashRoute();
  const callbacks = useRef({ onEnded, navigate });
  useEffect(() => {
    callbacks.current = { onEnded, navigate };
  }, [onEnded, navigate]);

  useEffect(() => {
    const started = startSession(user, {
      onEnded: () => callbacks.current.onEnded(),
      onIncoming: (incoming) => notifyIncoming(incoming, (id) => callbacks.current.navigate(id)),
    });
    setSession(started);
    return () => started.stop();
  }, [user]);

  if (!session) return null;
  return <Shell engine={session.engine} uploads={session.uploads} activeId={activeId} navigate={navigate} onLogout={onLogout} />;
}

interface ShellProps {
  engine: SyncEngine;
  uploads: UploadQueues;
  activeId: ConversationId | null;
  navigate: (id: ConversationId | null) => void;
  onLogout: () => void;
}

function Shell({ engine, uploads, activeId, navigate, onLogout }: ShellProps) {
  const state = useSyncExternalStore(engine.subscribe, engine.getState);
  const [dialog, setDialog] = useState<'chat' | 'group' | 'info' | 'search' | 'switcher' | null>(null);
  const [access, setAccess] = useState<NotificationAccess>(notificationAccess);
  const [chatFilter, setChatFilter] = useState('');
  const [searchInput, setSearchInput] = useState<SearchInput>(NO_SEARCH);
  const [searchState, search] = useMessageSearch();
  const [lastOpenedHit, setLastOpenedHit] = useState<string | null>(null);
  const [jump, setJump] = useState<Jump | null>(null);
  const jumpTokens = useRef(0);

  useEffect(() => engine.setActive(activeId), [engine, activeId]);

  // Ctrl/Cmd+K: the switcher; Ctrl/Cmd+Shift+F or "/": search (see shortcuts.ts for why).
  useEffect(() => {
    const onKey = (event: KeyboardEvent) => {
      const shortcut = shortcutOf(event, isTextField(event.target));
      if (shortcut === null) return;
      event.preventDefault();
      setDialog((current) => (current === shortcut ? null : shortcut));
    };
    window.addEventListener('keydown', onKey);
    return () => window.removeEventListener('keydown', onKey);
  }, []);

  // Files dropped anywhere but on a conversation would make the browser open them in place
  // of Parlor (losing what was typed and chosen): such drops do nothing instead.
  useEffect(() => {
    const holdFiles = (event: DragEvent) => {
      if (Array.from(event.dataTransfer?.types ?? []).includes('Files')) event.preventDefault();
    };
    window.addEventListener('dragover', holdFiles);
    window.addEventListener('drop', holdFiles);
    return () => {
      window.removeEventListener('dragover', holdFiles);
      window.removeEventListener('drop', holdFiles);
    };
  }, []);

  // A muted chat counts only what mentions me, as its notifications do.
  const totalUnread = state.chats.reduce((sum, chat) => sum + (chat.muted ? chat.unreadMentions : chat.unread), 0);
  useEffect(() => {
    document.title = totalUnread > 0 ? `(${totalUnread}) Parlor` : 'Parlor';
  }, [totalUnread]);

  const typingNames = useMemo(() => namesTyping(state), [state]);
  const activeChat = activeId === null ? undefined : state.chats.find((c) => c.id === activeId);

  // A chat I was removed from, or left, closes: back to the list.
  const wasOpen = useRef<ConversationId | null>(null);
  useEffect(() => {
    if (activeChat) wasOpen.current = activeChat.id;
    else if (wasOpen.current !== null && wasOpen.current === activeId && state.chatsStatus === 'ready') {
      wasOpen.current = null;
      setDialog((current) => (current === 'info' ? null : current));
      navigate(null);
    }
  }, [activeChat, activeId, state.chatsStatus, navigate]);

  /** Opens the search, scoped as asked (undefined: as it was); a changed scope searches again. */
  const openSearch = (conversationId?: ConversationId | null) => {
    if (conversationId !== undefined && conversationId !== searchInput.conversationId) {
      const next = { ...searchInput, conversationId };
      setSearchInput(next);
      search.setQuery(queryOf(next, Date.now()), true);
    }
    setDialog('search');
  };
  const openHit = (hit: SearchHit) => {
    setLastOpenedHit(hitKey(hit));
    setDialog(null);
    jumpTokens.current += 1;
    setJump({ conversationId: hit.conversation_id, seq: hit.seq, token: jumpTokens.current });
    navigate(hit.conversation_id);
  };

  const opened = (conversation: Conversation) => {
    setDialog(null);
    engine.upsertConversation(conversation);
    navigate(conversation.id);
  };
  const renderPresence = (userId: UserId) => <PresenceDot online={state.presence[userId]?.online ?? false} />;
  const renderLastSeen = (userId: UserId) => (
    <PresenceStatus online={state.presence[userId]?.online ?? false} lastSeen={state.presence[userId]?.lastSeen ?? null} />
  );
  /** A change the engine refuses before sending (an empty edit, say) says why in a notice. */
  const act = (change: () => unknown) => {
    try {
      change();
    } catch (cause) {
      engine.report(cause instanceof Error ? cause.message : 'That did not work.');
    }
  };

  return (
    <div className="app" data-view={activeId === null ? 'list' : 'conversation'}>
      <aside className="sidebar">
        <header className="sidebar-header">
          <div className="me">
            <Avatar name={state.me.username} seed={state.me.id} size="sm" />
            <span className="me-name">{state.me.username}</span>
          </div>
          <div className="header-actions">
            <button
              type="button"
              className="icon-button"
              aria-label="Search messages"
              title={`Search messages (${SEARCH_KEYS})`}
              aria-keyshortcuts="Control+Shift+F Meta+Shift+F /"
              onClick={() => openSearch(null)}
            >
              <Icon name="search" />
            </button>
            <button
              type="button"
              className="icon-button"
              aria-label="Jump to a chat or person"
              title={`Jump to a chat or person (${SWITCHER_KEYS})`}
              aria-keyshortcuts="Control+K Meta+K"
              onClick={() => setDialog('switcher')}
            >
              <Icon name="jump" />
            </button>
            {access === 'default' ? (
              <button
                type="button"
                className="icon-button"
                aria-label="Enable notifications"
                title="Enable notifications"
                onClick={() => void requestNotifications().then(setAccess)}
              >
                <Icon name="bell" />
              </button>
            ) : null}
            <button type="button" className="icon-button" aria-label="Log out" title="Log out" onClick={onLogout}>
              <Icon name="logout" />
            </button>
          </div>
        </header>
        <div className="sidebar-actions">
          <button type="button" className="button" onClick={() => setDialog('chat')}>
            <Icon name="plus" /> New chat
          </button>
          <button type="button" className="button" onClick={() => setDialog('group')}>
            <Icon name="group" /> New group
          </button>
        </div>
        <ChatFilter value={chatFilter} onChange={setChatFilter} />
        <nav className="chat-nav" aria-label="Conversations">
          <ChatList
            filter={chatFilter}
            chats={state.chats}
            status={state.chatsStatus}
            activeId={activeId}
            meId={state.me.id}
            typing={typingNames}
            hrefOf={conversationHref}
            renderPresence={renderPresence}
            previewOf={plainText}
          />
        </nav>
      </aside>

      <main className="main">
        {activeChat ? (
          <ConversationView
            key={activeChat.id}
            chat={activeChat}
            timeline={state.timelines[activeChat.id]}
            meId={state.me.id}
            names={state.names}
            typing={typingNames[activeChat.id] ?? []}
            status={<ChatStatus chat={activeChat} state={state} />}
            badge={activeChat.peerId ? renderPresence(activeChat.peerId) : null}
            avatarSeed={activeChat.peerId ?? activeChat.id}
            backHref={conversationHref(null)}
            uploads={uploads.of(activeChat.id)}
            onSend={(body, replyToSeq, files) => void engine.send(activeChat.id, body, replyToSeq, files)}
            onEdit={(seq, body) => act(() => engine.edit(activeChat.id, seq, body))}
            onDelete={(seq) => act(() => engine.deleteMessage(activeChat.id, seq))}
            onReact={(seq, emoji) => act(() => engine.toggleReaction(activeChat.id, seq, emoji))}
            onLoadUntil={(seq) => engine.loadUntil(activeChat.id, seq)}
            onJumpTo={(seq) => engine.jumpTo(activeChat.id, seq)}
            onLoadNewer={() => void engine.loadNewer(activeChat.id)}
            onJumpToLatest={() => engine.jumpToLatest(activeChat.id)}
            jump={jump?.conversationId === activeChat.id ? jump : null}
            onJumpStarted={() => setJump(null)}
            headerActions={
              <button
                type="button"
                className="icon-button"
                aria-label="Search in this chat"
                title="Search in this chat"
                onClick={() => openSearch(activeChat.id)}
              >
                <Icon name="search" />
              </button>
            }
            onOpenInfo={() => setDialog('info')}
            onTyping={() => engine.typingIn(activeChat.id)}
            onLoadOlder={() => void engine.loadOlder(activeChat.id)}
            onRetry={(id) => engine.retry(id)}
            onDiscard={(id) => engine.discard(id)}
          />
        ) : activeId !== null && state.chatsStatus === 'ready' ? (
          <div className="main-empty">
            <p>This conversation does not exist, or you are not a member.</p>
            <a href={conversationHref(null)}>Back to chats</a>
          </div>
        ) : (
          <div className="main-empty">
            <p>{state.chats.length > 0 ? 'Pick a chat to start reading.' : 'Start a chat to begin.'}</p>
          </div>
        )}
      </main>

      <ConnectionBanner connection={state.connection} />
      <Notices notices={state.notices} onDismiss={(id) => engine.dismissNotice(id)} />

      {dialog === 'chat' ? (
        <NewChatDialog
          meId={state.me.id}
          onClose={() => setDialog(null)}
          onCreated={opened}
          onPresence={(members) => engine.notePresence(members)}
        />
      ) : null}
      {dialog === 'info' && activeChat ? (
        <ChatInfoDialog
          chat={activeChat}
          meId={state.me.id}
          renderPresence={renderPresence}
          renderLastSeen={renderLastSeen}
          onClose={() => setDialog(null)}
          onMute={(muted) => engine.setMuted(activeChat.id, muted)}
          onRename={(title) => engine.rename(activeChat.id, title)}
          onAdd={(user) => {
            engine.notePresence([user]);
            act(() => engine.addMember(activeChat.id, user.id));
          }}
          onRemove={(userId) => act(() => engine.removeMember(activeChat.id, userId))}
          onSetRole={(userId, role) => act(() => engine.setRole(activeChat.id, userId, role))}
          onLeave={() => act(() => engine.leave(activeChat.id))}
        />
      ) : null}
      {dialog === 'search' ? (
        <SearchDialog
          input={searchInput}
          onInput={setSearchInput}
          state={searchState}
          search={search}
          chats={state.chats}
          names={state.names}
          meId={state.me.id}
          lastOpened={lastOpenedHit}
          onOpen={openHit}
          onClose={() => setDialog(null)}
        />
      ) : null}
      {dialog === 'switcher' ? (
        <QuickSwitcher
          chats={state.chats}
          meId={state.me.id}
          renderPresence={renderPresence}
          onOpenChat={(id) => {
            setDialog(null);
            navigate(id);
          }}
          onCreated={opened}
          onPresence={(members) => engine.notePresence(members)}
          onClose={() => setDialog(null)}
        />
      ) : null}
      {dialog === 'group' ? (
        <NewGroupDialog
          meId={state.me.id}
          onClose={() => setDialog(null)}
          onCreated={opened}
          onPresence={(members) => engine.notePresence(members)}
        />
      ) : null}
    </div>
  );
}

function ChatStatus({ chat, state }: { chat: ChatView; state: EngineState }) {
  if (chat.peerId) {
    const presence = state.presence[chat.peerId];
    return <PresenceStatus online={presence?.online ?? false} lastSeen={presence?.lastSeen ?? null} />;
  }
  const online = chat.members.filter((m) => m.id !== state.me.id && state.presence[m.id]?.online).length;
  return (
    <span className="presence-status">
      {chat.members.length} members{online > 0 ? `, ${online} online` : ''}
    </span>
  );
}

function ConnectionBanner({ connection }: { connection: EngineState['connection'] }) {
  const text =
    connection === 'offline'
      ? 'Offline. Reconnecting… Messages you send now go out when the connection is back.'
      : connection === 'connecting'
        ? 'Connecting…'
        : '';
  return (
    <output className={`connection-banner is-${connection}`}>{text}</output>
  );
}

const NOTICE_SHOWN_MS = 8_000;

/** Refused changes and the like, announced politely; each goes away by itself or on Dismiss. */
function Notices({ notices, onDismiss }: { notices: EngineState['notices']; onDismiss: (id: number) => void }) {
  const newest = notices.at(-1);
  useEffect(() => {
    if (!newest) return;
    const timer = window.setTimeout(() => onDismiss(newest.id), NOTICE_SHOWN_MS);
    return () => window.clearTimeout(timer);
  }, [newest, onDismiss]);
  return (
    <output className="notices" aria-live="polite">
      {notices.map((notice) => (
        <span key={notice.id} className="notice">
          <span>{notice.text}</span>
          <button type="button" className="link-button" onClick={() => onDismiss(notice.id)}>
            Dismiss
          </button>
        </span>
      ))}
    </output>
  );
}

function namesTyping(state: EngineState): Record<ConversationId, string[]> {
  const names: Record<ConversationId, string[]> = {};
  for (const [id, users] of Object.entries(state.typing)) {
    const chat = state.chats.find((c) => c.id === id);
    names[id] = users.map((userId) => chat?.members.find((m) => m.id === userId)?.username ?? 'Someone');
  }
  return names;
}
