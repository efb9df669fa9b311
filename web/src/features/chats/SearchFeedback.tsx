interface SearchFeedbackProps {
  query: string;
  searching: boolean;
  error: string | null;
  count: number;
}

/** What a user search has to say besides its results, announced politely. */
export function SearchFeedback({ query, searching, error, count }: SearchFeedbackProps) {
  let text = '';
  if (error) text = error;
  else if (query.trim() !== '' && !searching && count === 0) text = 'No one by that name.';
  return error ? (
    <p className="form-error" role="alert">
      {text}
    </p>
  ) : (
    <output className="field-hint search-feedback">{text}</output>
  );
}
