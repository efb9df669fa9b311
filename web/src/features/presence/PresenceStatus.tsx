import { relativeAgo } from '../../components/ui/format.ts';

interface PresenceStatusProps {
  online: boolean;
  lastSeen: string | null;
}

/** "online", or when the person was last seen, for a conversation's header. */
export function PresenceStatus({ online, lastSeen }: PresenceStatusProps) {
  if (online) return <span className="presence-status is-online">online</span>;
  return <span className="presence-status">{lastSeen ? `last seen ${relativeAgo(lastSeen)}` : 'offline'}</span>;
}
