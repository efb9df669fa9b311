interface PresenceDotProps {
  online: boolean;
}

/** A dot that is green while the person has a live connection; named for assistive tech. */
export function PresenceDot({ online }: PresenceDotProps) {
  const label = online ? 'online' : 'offline';
  return (
    <svg role="img" aria-label={label} viewBox="0 0 10 10" className={`presence-dot ${online ? 'is-online' : 'is-offline'}`}>
      <circle cx="5" cy="5" r="4" />
    </svg>
  );
}
