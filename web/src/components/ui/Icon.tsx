const PATHS = {
  close: 'M6 6l12 12M18 6L6 18',
  plus: 'M12 5v14M5 12h14',
  group: 'M9 11a3 3 0 1 0 0-6 3 3 0 0 0 0 6zm-6 8c0-3 3-5 6-5s6 2 6 5M17 11a3 3 0 1 0 0-6M21 19c0-2.5-1.8-4.3-4-4.8',
  send: 'M4 12l16-8-6 16-2-6-8-2z',
  back: 'M15 5l-7 7 7 7',
  logout: 'M10 5H6a1 1 0 0 0-1 1v12a1 1 0 0 0 1 1h4M14 8l4 4-4 4M18 12H9',
  bell: 'M6 16V11a6 6 0 1 1 12 0v5l2 2H4l2-2zM10 20a2 2 0 0 0 4 0',
  down: 'M12 5v14M6 13l6 6 6-6',
  clock: 'M12 7v5l3 2M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18z',
  check: 'M5 12l5 5 9-10',
  alert: 'M12 8v5M12 16.5v.5M12 3l10 18H2L12 3z',
} as const;

export type IconName = keyof typeof PATHS;

/** A stroked 24×24 icon; decorative (label the control that holds it). */
export function Icon({ name }: { name: IconName }) {
  return (
    <svg className="icon" viewBox="0 0 24 24" aria-hidden="true" focusable="false">
      <path d={PATHS[name]} />
    </svg>
  );
}
