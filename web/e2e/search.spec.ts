import { expect, test, type Locator, type Page } from '@playwright/test';

import { chatItem, directChat, groupChat, messages, messageWith, openChat, person, postMessages, screenshot, uniqueName } from './helpers.ts';

// Message search against the real server. The AWS deployment has no search (501
// not_available): there the same steps must show that calmly instead of results
// (scripts/test sets PARLOR_E2E_DEPLOYMENT=aws).
const deployment = process.env.PARLOR_E2E_DEPLOYMENT ?? 'embedded';
const searchable = deployment !== 'aws';

function searchDialog(page: Page): Locator {
  return page.getByRole('dialog', { name: 'Search messages' });
}

function results(page: Page): Locator {
  return searchDialog(page).getByRole('listbox', { name: 'Results' }).getByRole('option');
}

/** The message whose body is exactly "<prefix> <n>" (not "<prefix> <n>0"). */
function numbered(page: Page, prefix: string, n: number): Locator {
  return messages(page).filter({ hasText: new RegExp(`${prefix} ${n}(?!\\d)`) });
}

async function expectUnavailable(page: Page): Promise<void> {
  await expect(searchDialog(page).getByText('Search is not available on this server.')).toBeVisible();
  await expect(results(page)).toHaveCount(0);
}

test('a search finds an old message and opens it in its conversation, with the history around it', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'), { viewport: { width: 1280, height: 800 } });
  const ben = await person(browser, baseURL, uniqueName('ben'));
  const dm = await directChat(ben, ada);
  const group = await groupChat(ada, 'Release train', [ben]);
  const total = searchable ? 120 : 3;
  // The third of 120: far above the newest page the conversation opens with.
  const bodies = Array.from({ length: total }, (_, i) => (i === 2 ? 'the quokka sighting was on the old pier' : `history ${i + 1}`));
  await postMessages(ben, dm, bodies, 'search-history');
  await postMessages(ada, group, ['no quokka here, only trains'], 'search-group');

  const page = ada.page;
  await page.reload();
  // Accepted is not yet stored (nor indexed) in a cluster: the chat list shows what is.
  await expect(chatItem(page, 'Release train')).toContainText('only trains');
  await openChat(page, ben.username);
  await expect(messages(page).last()).toContainText(bodies.at(-1)!);

  await page.getByRole('button', { name: 'Search messages' }).click();
  const field = searchDialog(page).getByRole('combobox', { name: 'Search messages' });
  await expect(field).toBeFocused();
  await page.keyboard.type('quokka');
  if (!searchable) {
    await expectUnavailable(page);
    await screenshot(page, 'search-unavailable');
    for (const p of [ada, ben]) await p.context.close();
    return;
  }

  await expect(results(page)).toHaveCount(2);
  await expect(searchDialog(page).getByText('2 messages found')).toBeVisible();
  const inDm = results(page).filter({ hasText: 'old pier' });
  await expect(inDm).toContainText(ben.username);
  await expect(inDm.locator('mark')).toHaveText(/^quokka$/i);
  await expect(results(page).filter({ hasText: 'only trains' })).toContainText('Release train');

  await searchDialog(page).getByRole('button', { name: 'Newest' }).click();
  await expect(searchDialog(page).getByRole('button', { name: 'Newest' })).toHaveAttribute('aria-pressed', 'true');
  await expect(results(page).first()).toContainText('only trains');
  await screenshot(page, 'search-panel');

  // Arrows move through the results, the focus staying in the field; Enter opens.
  await field.focus();
  await page.keyboard.press('ArrowDown');
  await expect(results(page).first()).toHaveAttribute('aria-selected', 'true');
  await page.keyboard.press('ArrowDown');
  await expect(results(page).nth(1)).toHaveAttribute('aria-selected', 'true');
  await expect(field).toBeFocused();
  await page.keyboard.press('Enter');
  await expect(searchDialog(page)).toBeHidden();

  const hit = messageWith(page, 'the quokka sighting');
  await expect(hit).toBeInViewport();
  await expect(hit).toHaveClass(/is-highlighted/);
  await expect(hit).toBeFocused();
  await screenshot(page, 'search-jumped');
  // In context: what came before and after it is there, and nothing is missing up to the newest.
  await expect(numbered(page, 'history', 2)).toBeVisible();
  await expect(numbered(page, 'history', 4)).toBeVisible();
  await expect(page.getByText(`The beginning of your conversation with ${ben.username}`)).toBeVisible();
  const texts = await messages(page).allTextContents();
  expect(texts).toHaveLength(total);

  // Reopened, the search is as it was, the result opened last active again.
  await page.keyboard.press('Control+Shift+F');
  await expect(field).toHaveValue('quokka');
  await expect(results(page).nth(1)).toHaveAttribute('aria-selected', 'true');
  await page.keyboard.press('ArrowUp');
  await page.keyboard.press('Enter');
  await expect(page.getByRole('heading', { name: 'Release train', exact: true })).toBeVisible();
  await expect(messageWith(page, 'only trains')).toHaveClass(/is-highlighted/);

  await ada.context.close();
  await ben.context.close();
});

test('a hit far back opens a window of history that pages forward, and Jump to latest returns', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'), { viewport: { width: 1280, height: 800 } });
  const ben = await person(browser, baseURL, uniqueName('ben'));
  const dm = await directChat(ben, ada);
  const total = searchable ? 300 : 3;
  // Far more than a page of events after the hit: the window does not reach the newest.
  const bodies = Array.from({ length: total }, (_, i) => (i === 9 ? 'the wombat ate my homework' : `far ${i + 1}`));
  await postMessages(ben, dm, bodies, 'far');

  const page = ada.page;
  await page.reload();
  await openChat(page, ben.username);
  await expect(messages(page).last()).toContainText(bodies.at(-1)!);
  await page.getByRole('button', { name: 'Search messages' }).click();
  await page.keyboard.type('wombat');
  if (!searchable) {
    await expectUnavailable(page);
    for (const p of [ada, ben]) await p.context.close();
    return;
  }
  await expect(results(page)).toHaveCount(1);
  await page.keyboard.press('ArrowDown');
  await page.keyboard.press('Enter');

  const hit = messageWith(page, 'the wombat');
  await expect(hit).toBeInViewport();
  await expect(hit).toHaveClass(/is-highlighted/);
  await expect(numbered(page, 'far', 9)).toBeVisible();
  await expect(numbered(page, 'far', 11)).toBeVisible();
  const jumpToLatest = page.getByRole('button', { name: 'Jump to latest' });
  await expect(jumpToLatest).toBeVisible();
  await expect(numbered(page, 'far', total)).toHaveCount(0);
  await screenshot(page, 'search-jumped-far');

  // A live message meanwhile is not shown in the window (it waits for its turn), and Jump
  // to latest brings the newest page with it.
  await postMessages(ben, dm, ['live while reading old history'], 'far-live');
  await expect(page.getByRole('list', { name: 'Chats' })).toContainText('live while reading old history');
  await expect(messageWith(page, 'live while reading old history')).toHaveCount(0);
  await jumpToLatest.click();
  await expect(messageWith(page, 'live while reading old history')).toBeInViewport();
  await expect(jumpToLatest).toBeHidden();

  // Again, then paging forward by scrolling down: every message once, in order, up to the newest.
  await page.keyboard.press('Control+Shift+F');
  await page.keyboard.press('Enter');
  await expect(searchDialog(page)).toBeHidden();
  await expect(hit).toBeInViewport();
  const scroller = page.locator('.messages-scroll');
  await expect(async () => {
    await scroller.evaluate((el) => {
      el.scrollTop = el.scrollHeight;
    });
    await expect(jumpToLatest).toBeHidden({ timeout: 1_000 });
  }).toPass();
  await expect(messageWith(page, 'live while reading old history')).toBeAttached();
  const seen = (await messages(page).allTextContents()).map((t) => /far (\d+)/.exec(t)?.[1]).filter((n) => n !== undefined).map(Number);
  expect(seen).toEqual([...new Set(seen)].sort((a, b) => a - b));
  expect(seen.at(-1)).toBe(total);

  await ada.context.close();
  await ben.context.close();
});

test('search filters by chat and sender, pages with Load more, and says when nothing matches', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  const cara = await person(browser, baseURL, uniqueName('cara'));
  const dm = await directChat(ben, ada);
  const group = await groupChat(cara, 'Standups', [ada]);
  const count = searchable ? 45 : 2;
  await postMessages(ben, dm, Array.from({ length: count }, (_, i) => `standup note ${i + 1}`), 'standup-ben');
  await postMessages(ada, dm, ['my own standup note'], 'standup-ada');
  await postMessages(cara, group, ['standup moved to ten'], 'standup-cara');

  const page = ada.page;
  await page.reload();
  await expect(chatItem(page, 'Standups')).toContainText('moved to ten');
  await expect(chatItem(page, ben.username)).toContainText('my own standup note');
  await openChat(page, ben.username);
  // "/" outside a text field opens the search; Escape closes it and gives the focus back.
  const opener = page.getByRole('button', { name: 'Chat info', exact: true });
  await opener.focus();
  await page.keyboard.press('/');
  await expect(searchDialog(page)).toBeVisible();
  await page.keyboard.type('standup');
  if (!searchable) {
    await expectUnavailable(page);
    await page.keyboard.press('Escape');
    await expect(opener).toBeFocused();
    for (const p of [ada, ben, cara]) await p.context.close();
    return;
  }
  await expect(results(page)).toHaveCount(20);
  await expect(searchDialog(page).getByText('20+ messages found')).toBeVisible();
  await searchDialog(page).getByRole('button', { name: 'Load more' }).click();
  await expect(results(page)).toHaveCount(40);
  await searchDialog(page).getByRole('button', { name: 'Load more' }).click();
  await expect(results(page)).toHaveCount(count + 2);
  await expect(searchDialog(page).getByRole('button', { name: 'Load more' })).toBeHidden();

  await searchDialog(page).getByLabel('From', { exact: true }).selectOption({ label: `${ada.username} (you)` });
  await expect(results(page)).toHaveCount(1);
  await expect(results(page).first()).toContainText('You');
  await searchDialog(page).getByLabel('From', { exact: true }).selectOption({ label: 'Anyone' });
  await searchDialog(page).getByLabel('In', { exact: true }).selectOption({ label: 'Standups' });
  await expect(results(page)).toHaveCount(1);
  await expect(results(page).first()).toContainText('moved to ten');
  await searchDialog(page).getByLabel('When', { exact: true }).selectOption({ label: 'Past week' });
  await expect(results(page)).toHaveCount(1);

  const field = searchDialog(page).getByRole('combobox', { name: 'Search messages' });
  await field.fill('zebra crossing');
  await expect(searchDialog(page).getByText('No messages match “zebra crossing” with these filters.')).toBeVisible();
  await page.keyboard.press('Escape');
  await expect(searchDialog(page)).toBeHidden();
  await expect(opener).toBeFocused();

  // From the conversation's header: scoped to that chat.
  await page.getByRole('button', { name: 'Search in this chat' }).click();
  await expect(searchDialog(page).getByLabel('In', { exact: true })).toHaveValue(dm);
  await field.fill('moved');
  await expect(searchDialog(page).getByText('No messages match “moved” with these filters.')).toBeVisible();

  for (const p of [ada, ben, cara]) await p.context.close();
});

test('search on a phone in dark mode opens the result full screen', async ({ browser, baseURL }) => {
  const phone = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, colorScheme: 'dark' as const };
  const ada = await person(browser, baseURL, uniqueName('ada'), phone);
  const ben = await person(browser, baseURL, uniqueName('ben'));
  const dm = await directChat(ben, ada);
  const total = searchable ? 120 : 3;
  const bodies = Array.from({ length: total }, (_, i) => (i === 5 ? 'Found the lighthouse photo from the trip' : `phone history ${i + 1}`));
  await postMessages(ben, dm, bodies, 'phone-history');

  const page = ada.page;
  await page.reload();
  await expect(chatItem(page, ben.username)).toContainText(bodies.at(-1)!);
  await page.getByRole('button', { name: 'Search messages' }).tap();
  await page.keyboard.type('lighthouse photo');
  if (!searchable) {
    await expectUnavailable(page);
    await screenshot(page, 'phone-search-unavailable-dark');
    for (const p of [ada, ben]) await p.context.close();
    return;
  }
  await expect(results(page)).toHaveCount(1);
  await screenshot(page, 'phone-search-dark');
  await results(page).first().tap();
  await expect(page.getByRole('heading', { name: ben.username, exact: true })).toBeVisible();
  const hit = messageWith(page, 'lighthouse photo');
  await expect(hit).toBeInViewport();
  await expect(hit).toHaveClass(/is-highlighted/);
  await expect(numbered(page, 'phone history', 5)).toBeAttached();
  await expect(numbered(page, 'phone history', 7)).toBeAttached();
  await screenshot(page, 'phone-search-jumped-dark');
  await expect(numbered(page, 'phone history', total)).toBeAttached();

  await ada.context.close();
  await ben.context.close();
});
