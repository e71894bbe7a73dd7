/**
 * cellfleet's JupyterLab extension: a left sidebar listing the running cellfleet clusters (from
 * the server extension's `cellfleet/api/clusters`): this server's notebooks' clusters first,
 * each named by its notebook, then clusters started with the CLI, then other servers' kernels.
 * Its buttons open a cluster's live dashboard pages as tabs of one dock area beside the
 * notebook (the first one splits it off; the next ones join it), in JupyterLab's theme.
 */

import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  ICommandPalette,
  IFrame,
  IThemeManager,
  MainAreaWidget
} from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

/** The dashboard pages of a cluster, in the order their buttons appear. */
export const PAGES: [string, string][] = [
  ['', 'Overview'],
  ['graph', 'Task graph'],
  ['timeline', 'Timeline'],
  ['actors', 'Actors'],
  ['objects', 'Objects'],
  ['nodes', 'Nodes']
];

const POLL_MS = 3000;
const PANEL_ID = 'cellfleet-sidebar';
const COMMAND = 'cellfleet:open-dashboard';

/** A cluster as `cellfleet/api/clusters` lists it. */
export interface ICluster {
  id: string;
  address: string;
  kernel_id?: string | null;
  start_time?: number | null;
  pid?: number | null;
  source?: string | null;
  session_dir?: string | null;
  notebook?: string | null;
  this_server?: boolean;
}

/** How the sidebar and the tabs name a cluster: by its notebook when it has one. */
export function clusterName(cluster: ICluster): string {
  if (cluster.notebook) {
    return cluster.notebook.split('/').pop() ?? cluster.notebook;
  }
  return cluster.source === 'session' ? `CLI cluster ${cluster.address}` : cluster.address;
}

/** The sidebar's sections: this server's notebooks, the CLI's clusters, the others. */
export function sections(clusters: ICluster[], kernelId: string | null): [string, ICluster[]][] {
  const sorted = sortClusters(clusters, kernelId);
  return [
    ['Notebooks on this server', sorted.filter(c => c.this_server)],
    ['Started with the CLI', sorted.filter(c => !c.this_server && !c.kernel_id)],
    ['Other clusters on this machine', sorted.filter(c => !c.this_server && c.kernel_id)]
  ];
}

const ICON = new LabIcon({
  name: 'cellfleet:icon',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">' +
    '<g class="jp-icon3" fill="#616161">' +
    '<rect x="2" y="3" width="8" height="8" rx="1"/><rect x="14" y="3" width="8" height="8" rx="1"/>' +
    '<rect x="2" y="13" width="8" height="8" rx="1"/><rect x="14" y="13" width="8" height="8" rx="1"/>' +
    '</g></svg>'
});

/** The clusters the server knows of; throws on a failed request. */
async function fetchClusters(settings: ServerConnection.ISettings): Promise<ICluster[]> {
  const url = URLExt.join(settings.baseUrl, 'cellfleet/api/clusters');
  const response = await ServerConnection.makeRequest(url, { method: 'GET' }, settings);
  if (!response.ok) {
    throw new Error(`${response.status} ${response.statusText}`);
  }
  const body = await response.json();
  return Array.isArray(body.clusters) ? body.clusters : [];
}

/** The sidebar: one entry per cluster, polled every few seconds. */
class ClusterPanel extends Widget {
  constructor(
    private readonly _settings: ServerConnection.ISettings,
    private readonly _kernelId: () => string | null,
    private readonly _open: (cluster: ICluster, page: string) => void
  ) {
    super();
    this.id = PANEL_ID;
    this.addClass('jp-cellfleet-panel');
    this.title.icon = ICON;
    this.title.caption = 'cellfleet';
    const header = document.createElement('h2');
    header.textContent = 'cellfleet';
    this._status = document.createElement('div');
    this._status.className = 'jp-cellfleet-status';
    this._list = document.createElement('ul');
    this._list.className = 'jp-cellfleet-clusters';
    this.node.append(header, this._status, this._list);
  }

  /** The clusters of the last successful poll. */
  get clusters(): ICluster[] {
    return this._clusters;
  }

  /** Poll now and then every POLL_MS until disposed. */
  start(): void {
    void this.refresh();
    this._timer = window.setInterval(() => void this.refresh(), POLL_MS);
  }

  dispose(): void {
    if (this._timer !== null) {
      window.clearInterval(this._timer);
      this._timer = null;
    }
    super.dispose();
  }

  async refresh(): Promise<void> {
    if (this._busy) {
      return;
    }
    this._busy = true;
    try {
      this._clusters = await fetchClusters(this._settings);
      this._status.textContent = '';
      this._render();
    } catch (error) {
      this._status.textContent = `cannot list clusters: ${error}`;
    } finally {
      this._busy = false;
    }
  }

  /** Re-draw (only when the clusters or the active notebook's kernel changed). */
  _render(): void {
    const kernelId = this._kernelId();
    const key = JSON.stringify([kernelId, this._clusters]);
    if (key === this._drawn) {
      return;
    }
    this._drawn = key;
    this._list.replaceChildren();
    if (this._clusters.length === 0) {
      const empty = document.createElement('li');
      empty.className = 'jp-cellfleet-empty';
      empty.textContent = 'No running clusters.';
      this._list.append(empty);
      return;
    }
    for (const [heading, members] of sections(this._clusters, kernelId)) {
      if (members.length === 0) {
        continue;
      }
      const head = document.createElement('li');
      head.className = 'jp-cellfleet-section';
      head.textContent = heading;
      this._list.append(head);
      for (const cluster of members) {
        this._list.append(this._entry(cluster, kernelId));
      }
    }
  }

  _entry(cluster: ICluster, kernelId: string | null): HTMLLIElement {
    const item = document.createElement('li');
    item.className = 'jp-cellfleet-cluster';
    item.dataset.clusterId = cluster.id;
    const title = document.createElement('div');
    title.className = 'jp-cellfleet-title';
    title.textContent = clusterName(cluster);
    title.title = `cluster ${cluster.id}` + (cluster.pid ? `, pid ${cluster.pid}` : '');
    if (kernelId && cluster.kernel_id === kernelId) {
      item.classList.add('jp-mod-current');
      const badge = document.createElement('span');
      badge.className = 'jp-cellfleet-badge';
      badge.textContent = 'this notebook';
      title.append(' ', badge);
    }
    const address = document.createElement('div');
    address.className = 'jp-cellfleet-address';
    address.textContent = cluster.address;
    const buttons = document.createElement('div');
    buttons.className = 'jp-cellfleet-pages';
    for (const [page, label] of PAGES) {
      const button = document.createElement('button');
      button.className = 'jp-Button jp-mod-styled jp-mod-reject jp-cellfleet-page';
      button.dataset.page = page || 'overview';
      button.textContent = label;
      button.addEventListener('click', () => this._open(cluster, page));
      buttons.append(button);
    }
    item.append(title, address, buttons);
    return item;
  }

  private _status: HTMLDivElement;
  private _list: HTMLUListElement;
  private _clusters: ICluster[] = [];
  private _drawn = '';
  private _busy = false;
  private _timer: number | null = null;
}

/** The active notebook's cluster first, then the others by start time. */
export function sortClusters(clusters: ICluster[], kernelId: string | null): ICluster[] {
  const mine = (c: ICluster) => (kernelId && c.kernel_id === kernelId ? 0 : 1);
  return [...clusters].sort(
    (a, b) => mine(a) - mine(b) || (a.start_time ?? 0) - (b.start_time ?? 0)
  );
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'cellfleet:sidebar',
  description: 'Lists cellfleet clusters and opens their dashboard pages.',
  autoStart: true,
  optional: [INotebookTracker, ICommandPalette, ILayoutRestorer, IThemeManager],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker | null,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    themes: IThemeManager | null
  ) => {
    const settings = ServerConnection.makeSettings();
    const kernelId = (): string | null =>
      tracker?.currentWidget?.sessionContext.session?.kernel?.id ?? null;

    const theme = (): string =>
      themes && themes.theme && !themes.isLight(themes.theme) ? 'dark' : 'light';
    const frames = new Map<string, [IFrame, string]>(); // widget id -> frame, page url
    const pageUrl = (cluster: ICluster, page: string): string =>
      URLExt.join(settings.baseUrl, 'cellfleet/dashboard', cluster.id, page) +
      `?theme=${theme()}`;

    const open = (cluster: ICluster, page: string): void => {
      const id = `cellfleet-${cluster.id}-${page || 'overview'}`;
      const existing = Array.from(app.shell.widgets('main')).find(w => w.id === id);
      if (existing) {
        app.shell.activateById(id);
        return;
      }
      const frame = new IFrame({
        sandbox: ['allow-scripts', 'allow-same-origin', 'allow-popups'],
        referrerPolicy: 'same-origin'
      });
      frame.url = pageUrl(cluster, page);
      frame.addClass('jp-cellfleet-frame');
      const widget = new MainAreaWidget({ content: frame });
      widget.id = id;
      widget.addClass('jp-cellfleet-dashboard');
      const label = PAGES.find(([name]) => name === page)?.[1] ?? page;
      widget.title.label = `${label} · ${clusterName(cluster)}`;
      widget.title.caption = `cellfleet ${label} of ${clusterName(cluster)} (${cluster.address})`;
      widget.title.icon = ICON;
      widget.title.closable = true;
      frames.set(id, [frame, page]);
      widget.disposed.connect(() => frames.delete(id));
      // one dock area for every dashboard page: join the open one, else split one off
      const sibling = Array.from(app.shell.widgets('main'))
        .filter(w => w.hasClass('jp-cellfleet-dashboard') && w.isAttached)
        .pop();
      const notebook = tracker?.currentWidget;
      if (sibling) {
        app.shell.add(widget, 'main', { mode: 'tab-after', ref: sibling.id });
      } else if (notebook && notebook.isAttached) {
        app.shell.add(widget, 'main', { mode: 'split-right', ref: notebook.id });
      } else {
        app.shell.add(widget, 'main');
      }
      app.shell.activateById(id);
    };

    // The pages follow JupyterLab's theme.
    themes?.themeChanged.connect(() => {
      for (const [, [frame]] of frames) {
        const url = new URL(frame.url, window.location.href);
        url.searchParams.set('theme', theme());
        frame.url = url.toString();
      }
    });

    const panel = new ClusterPanel(settings, kernelId, open);
    app.shell.add(panel, 'left', { rank: 850 });
    restorer?.add(panel, PANEL_ID);
    panel.start();

    // Re-order the list when the active notebook (or its kernel) changes.
    const redraw = () => panel._render();
    tracker?.currentChanged.connect((_, notebook) => {
      redraw();
      notebook?.sessionContext.kernelChanged.connect(redraw);
    });

    app.commands.addCommand(COMMAND, {
      label: args => (args.page ? `Open cellfleet ${args.page} page` : 'Open cellfleet dashboard'),
      caption: "Open a cellfleet cluster's dashboard page next to the notebook",
      describedBy: {
        args: {
          type: 'object',
          properties: {
            id: { type: 'string', description: 'cluster id (default: the notebook\'s)' },
            page: { type: 'string', enum: PAGES.map(([name]) => name || 'overview') }
          }
        }
      },
      execute: async args => {
        const clusters = await fetchClusters(settings);
        const wanted = args.id as string | undefined;
        const cluster = wanted
          ? clusters.find(c => c.id === wanted)
          : sortClusters(clusters, kernelId())[0];
        if (!cluster) {
          throw new Error(wanted ? `no running cellfleet cluster ${wanted}` : 'no running cellfleet cluster');
        }
        const page = (args.page as string | undefined) ?? 'graph';
        open(cluster, page === 'overview' ? '' : page);
      }
    });
    palette?.addItem({ command: COMMAND, category: 'cellfleet' });
  }
};

export default plugin;
